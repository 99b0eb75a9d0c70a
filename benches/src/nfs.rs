//! Real NFS through each path: nfs-ganesha exporting a file and a tree, `nfs-cat` of the file (its
//! checksum compared) and `nfs-ls -R` of the tree, timed.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use test_support::{ganesha_command, wait_port};

use crate::measure::Figures;
use crate::paths::{our_pair, spawn, stunnel_pair};
use crate::Settings;

/// nfs-ganesha serving a file and a tree; `nfs-cat` and `nfs-ls -R` timed through each path.
pub(crate) fn measure(bin: &Path, pki: &Path, s: &Settings, results: &mut [Figures]) -> anyhow::Result<()> {
    let export = pki.join("export");
    std::fs::create_dir_all(export.join("tree"))?;
    let data: Vec<u8> =
        (0..(s.nfs_file_mib << 20) as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(export.join("big.bin"), &data)?;
    for i in 0..s.nfs_tree_files {
        let sub = export.join("tree").join(format!("d{:02}", i % 20));
        std::fs::create_dir_all(&sub)?;
        std::fs::write(sub.join(format!("f{i:04}.txt")), format!("file {i}\n"))?;
    }
    let (mut ganesha, nfs) = ganesha_command(pki);
    let _ganesha =
        spawn(&mut ganesha).context("ganesha.nfsd (apt-get install nfs-ganesha nfs-ganesha-vfs)")?;
    wait_port(nfs)?;
    let (_st, st_addr) = stunnel_pair(pki, "nfs", nfs, false)?;
    let (_ours, ours_addr) = our_pair(bin, pki, "nfs", nfs, false)?;
    let want = digest(&data);
    for _ in 0..s.reps {
        for (i, addr) in [nfs, st_addr, ours_addr].into_iter().enumerate() {
            let t = Instant::now();
            let url = format!("nfs://127.0.0.1/export/big.bin?version=4&nfsport={}", addr.port());
            let out = Command::new("timeout")
                .args(["300", "nfs-cat", &url])
                .output()
                .context("nfs-cat (libnfs-utils)")?;
            let took = t.elapsed().as_secs_f64();
            if !out.status.success() || digest(&out.stdout) != want {
                bail!("nfs-cat through path {i}: wrong data ({} bytes)", out.stdout.len());
            }
            results[i].nfs_cat_s.push(took);
            let t = Instant::now();
            let url = format!("nfs://127.0.0.1/export/tree?version=4&nfsport={}", addr.port());
            let out =
                Command::new("timeout").args(["300", "nfs-ls", "-R", &url]).output().context("nfs-ls")?;
            let took = t.elapsed().as_secs_f64();
            let listed = String::from_utf8_lossy(&out.stdout).matches(".txt").count();
            if listed < s.nfs_tree_files {
                bail!("nfs-ls -R through path {i} listed {listed} of {} files", s.nfs_tree_files);
            }
            results[i].nfs_ls_s.push(took);
        }
    }
    Ok(())
}

/// A cheap checksum to compare what nfs-cat returned with the file (not a security measure).
fn digest(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}
