//! Writing files so that a crash leaves the old or the new file, never half of one.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Mode of private keys: owner read/write only.
pub const SECRET: u32 = 0o600;
/// Mode of certificates, CRLs and the index.
pub const PUBLIC: u32 = 0o644;
/// Mode of the CA directory: it holds the CA key.
pub const PRIVATE_DIR: u32 = 0o700;

/// Writes `contents` to a temporary file beside `path` with `mode`, syncs it, and renames it over
/// `path`. With `replace == false` the rename refuses to replace an existing file (no race with a
/// second writer).
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32, replace: bool) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    // tempfile creates the file with mode 0600, so a key is never readable by others, not even
    // for the moment before set_permissions.
    let mut tmp = tempfile::Builder::new().prefix(&format!(".{name}.")).suffix(".tmp").tempfile_in(dir)?;
    tmp.write_all(contents)?;
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.as_file().sync_all()?;
    if replace {
        tmp.persist(path).map_err(|e| e.error)?;
    } else {
        tmp.persist_noclobber(path).map_err(|e| e.error)?;
    }
    // Make the rename itself durable.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
