//! `mpirun -n N dpo-wgpu train …`: the processes of a data-parallel job. With the cargo feature
//! `mpi`, a process started by `mpirun` (or another MPI launcher) joins the job over MPI and gives
//! the core a `Collective` (`train/collective.rs`) to sum gradients and statistics through; rank 0
//! alone prints the run and writes files. Without the feature, a process that finds itself
//! started as one of several ranks refuses to run, rather than train N copies that overwrite
//! each other's output.

use std::process::ExitCode;

use dpo_wgpu::error::{Error, Result};
use dpo_wgpu::train::collective::Collective;

/// This process's place in the job: rank 0 of 1 when started alone.
pub struct Ranks {
    pub rank: usize,
    pub size: usize,
    /// The rank among those on this host: which GPU to take by default.
    pub local_rank: usize,
    #[cfg(feature = "mpi")]
    universe: Option<mpi::environment::Universe>,
}

/// What the MPI launchers (Open MPI's `mpirun`; MPICH's and Intel MPI's through PMI) tell each
/// process they start: (world size, rank on this host).
fn launched_as() -> (usize, usize) {
    let var = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| std::env::var(n).ok()?.parse::<usize>().ok())
    };
    let size = var(&["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]);
    let local = var(&["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"]);
    (size.unwrap_or(1), local.unwrap_or(0))
}

impl Ranks {
    /// Join the job this process was started in, if any.
    pub fn start() -> Result<Self> {
        let (size, local_rank) = launched_as();
        if size <= 1 {
            return Ok(Self::alone());
        }
        Self::join(size, local_rank)
    }

    /// A process on its own.
    pub fn alone() -> Self {
        Self {
            rank: 0,
            size: 1,
            local_rank: 0,
            #[cfg(feature = "mpi")]
            universe: None,
        }
    }

    #[cfg(not(feature = "mpi"))]
    fn join(size: usize, _local_rank: usize) -> Result<Self> {
        Err(Error::Invalid(format!(
            "started as one of {size} MPI processes, but this dpo-wgpu was built without MPI: \
             build it with `cargo build --release --features mpi`, or run it without mpirun"
        )))
    }

    #[cfg(feature = "mpi")]
    fn join(_size: usize, local_rank: usize) -> Result<Self> {
        use mpi::traits::Communicator;
        let universe = mpi::initialize()
            .ok_or_else(|| Error::Device("MPI could not be initialized".into()))?;
        let world = universe.world();
        Ok(Self {
            rank: world.rank() as usize,
            size: world.size() as usize,
            local_rank,
            universe: Some(universe),
        })
    }

    /// The one process that prints the run and writes its files.
    pub fn is_writer(&self) -> bool {
        self.rank == 0
    }

    /// What the trainer sums through: `None` alone.
    pub fn group(&self) -> Option<Box<dyn Collective>> {
        #[cfg(feature = "mpi")]
        if let Some(universe) = &self.universe {
            return Some(Box::new(MpiGroup {
                world: universe.world(),
            }));
        }
        None
    }

    /// Whether `flag` is set on any rank (every rank must ask at the same point).
    pub fn any(&self, flag: bool) -> bool {
        #[cfg(feature = "mpi")]
        if let Some(universe) = &self.universe {
            use mpi::collective::SystemOperation;
            use mpi::traits::CommunicatorCollectives;
            let mut any = 0u8;
            universe
                .world()
                .all_reduce_into(&u8::from(flag), &mut any, SystemOperation::max());
            return any > 0;
        }
        flag
    }

    /// A line on stderr, in a job prefixed `rank R/N: `, written at once (mpirun forwards every
    /// rank's stderr, and a line written in pieces would interleave with another rank's).
    pub fn say(&self, line: &str) {
        use std::io::Write;
        let line = format!("{}{line}\n", self.prefix());
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    /// `rank R/N: ` in a job, nothing alone.
    pub fn prefix(&self) -> String {
        match self.size {
            1 => String::new(),
            size => format!("rank {}/{size}: ", self.rank),
        }
    }

    /// End this process with `code`. In a job, a failed rank aborts the whole job, so that no
    /// other rank waits for it forever.
    pub fn exit(&self, code: u8) -> ExitCode {
        #[cfg(feature = "mpi")]
        if code != 0
            && let Some(universe) = &self.universe
        {
            use mpi::traits::Communicator;
            universe.world().abort(code.into());
        }
        ExitCode::from(code)
    }
}

/// The job's processes over MPI's world communicator.
#[cfg(feature = "mpi")]
struct MpiGroup {
    world: mpi::topology::SimpleCommunicator,
}

/// Sums travel in pieces of this many values (64 MiB of f32), so the receive buffer stays small
/// and no count overflows MPI's 32-bit counts, whatever the model's size.
#[cfg(feature = "mpi")]
const CHUNK: usize = 1 << 24;

#[cfg(feature = "mpi")]
impl Collective for MpiGroup {
    fn rank(&self) -> usize {
        use mpi::traits::Communicator;
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        use mpi::traits::Communicator;
        self.world.size() as usize
    }

    fn sum(&self, values: &mut [f32]) -> Result<()> {
        use mpi::collective::SystemOperation;
        use mpi::traits::CommunicatorCollectives;
        let mut received = vec![0f32; values.len().min(CHUNK)];
        for piece in values.chunks_mut(CHUNK) {
            let received = &mut received[..piece.len()];
            self.world
                .all_reduce_into(&*piece, received, SystemOperation::sum());
            piece.copy_from_slice(received);
        }
        Ok(())
    }

    fn gather(&self, value: u64) -> Result<Vec<u64>> {
        use mpi::traits::CommunicatorCollectives;
        let mut all = vec![0u64; self.size()];
        self.world.all_gather_into(&value, &mut all[..]);
        Ok(all)
    }
}
