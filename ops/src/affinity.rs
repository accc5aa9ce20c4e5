//! CPU affinity, so `sluicectl bench` can keep the edge and the load generator on different
//! cores: the generator's work and its scheduling are then not charged to the server, and the
//! report can say exactly which cores each side had.
//!
//! Linux semantics: a thread's CPU set is inherited by the threads it starts, so binding the
//! calling thread while a runtime (or the edge, with its WAL writer thread) starts binds all of
//! that runtime's threads.

use std::io;

/// A set of CPUs, as `sched_setaffinity(2)` takes it.
#[derive(Clone, Copy)]
pub struct CpuSet(libc::cpu_set_t);

impl std::fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.cpus()).finish()
    }
}

impl CpuSet {
    /// The CPUs the calling thread may run on now.
    pub fn current() -> io::Result<Self> {
        // SAFETY: `cpu_set_t` is plain data, all zeroes is the empty set, and the kernel writes at
        // most the size passed.
        let mut set = unsafe { std::mem::zeroed::<libc::cpu_set_t>() };
        let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(set))
    }

    /// The set holding only `cpu`.
    pub fn only(cpu: usize) -> Self {
        // SAFETY: as in `current`; `CPU_SET` ignores CPUs past the set's capacity.
        let mut set = unsafe { std::mem::zeroed::<libc::cpu_set_t>() };
        unsafe { libc::CPU_SET(cpu, &mut set) };
        Self(set)
    }

    /// The CPUs in the set, lowest first.
    pub fn cpus(&self) -> Vec<usize> {
        // SAFETY: `CPU_ISSET` only reads the set, and every index is below its capacity.
        (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &self.0) }).collect()
    }

    /// Restricts the calling thread (and the threads it starts from now on) to this set.
    pub fn bind_current_thread(&self) -> io::Result<()> {
        // SAFETY: pid 0 is the calling thread; the set is a valid `cpu_set_t` of the size passed.
        let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Runs `f` with the calling thread bound to `set` (when there is one), then gives the thread
/// back the CPUs it had. Threads started inside `f` keep `set`.
pub fn on_cpus<T>(set: Option<&CpuSet>, f: impl FnOnce() -> T) -> io::Result<T> {
    let Some(set) = set else { return Ok(f()) };
    let before = CpuSet::current()?;
    set.bind_current_thread()?;
    let out = f();
    before.bind_current_thread()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_restricts_this_thread_and_its_children_then_restores() {
        let all = CpuSet::current().unwrap();
        let first = all.cpus()[0];
        let (inside, child) = on_cpus(Some(&CpuSet::only(first)), || {
            let child = std::thread::spawn(|| CpuSet::current().unwrap().cpus()).join().unwrap();
            (CpuSet::current().unwrap().cpus(), child)
        })
        .unwrap();
        assert_eq!(inside, vec![first]);
        assert_eq!(child, vec![first], "a thread started while bound inherits the set");
        assert_eq!(CpuSet::current().unwrap().cpus(), all.cpus(), "the thread's CPUs are restored");
    }

    #[test]
    fn no_set_runs_unbound() {
        let all = CpuSet::current().unwrap().cpus();
        assert_eq!(on_cpus(None, || CpuSet::current().unwrap().cpus()).unwrap(), all);
    }
}
