//! Text: the tokenizer, chat templates, training rows, TRL's tokenization and collation, and
//! generated tokens turned back into text. Knows the model only as the batches it scores.

pub mod chat;
pub mod collate;
pub mod rows;
pub mod stream;
pub mod tokenize;
pub mod tokenizer;
