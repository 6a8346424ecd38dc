//! Small data disks for full-disk faults: a host's data dir can be a tmpfs of a
//! few MiB, mounted inside the test's temp dir (nothing else is touched), filled
//! up with a file and freed again. Mounts are undone when the cluster is
//! dropped; mounts left by a killed run are undone before its temp dir is removed.

use std::io::Write as _;
use std::path::Path;

use super::topology::run;

/// Name of the file that fills a disk.
const FILLER: &str = "nemesis-filler";

/// Mounts a tmpfs of `mib` MiB on `dir` (created if missing).
pub fn mount_small(dir: &Path, mib: u64) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let size = format!("size={mib}m,mode=0700");
    run(
        "mount",
        &["-t", "tmpfs", "-o", &size, "failoverd-test", &dir.display().to_string()],
    )?;
    Ok(())
}

/// Unmounts `dir` (lazily, so a process still holding a file cannot block it).
pub fn unmount(dir: &Path) {
    let _ = run("umount", &["-l", &dir.display().to_string()]);
}

/// Unmounts every mount at or under `root` (from /proc/self/mounts).
pub fn unmount_under(root: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for point in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)) {
        if Path::new(point).starts_with(root) {
            unmount(Path::new(point));
        }
    }
}

/// Fills the file system of `dir` with a file until a write fails for lack of
/// space; the bytes written.
pub fn fill(dir: &Path) -> Result<u64, String> {
    let path = dir.join(FILLER);
    let mut file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    // Bounded: a tmpfs of a few MiB fills in a few hundred chunks.
    for _ in 0..1_000_000 {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    // Also the last bytes a 64 KiB chunk did not fit in.
    while let Ok(n) = file.write(&[0u8; 512]) {
        if n == 0 {
            break;
        }
        written += n as u64;
    }
    Ok(written)
}

/// Removes the file [`fill`] wrote.
pub fn free(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(FILLER));
}
