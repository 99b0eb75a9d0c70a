//! The report: a Markdown table of medians (min-max) per path, the ratios of ours to stunnel's
//! against the targets, and target/bench-results.json.

use std::path::Path;

use anyhow::Context;

use crate::measure::Figures;
use crate::Settings;

fn med(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub(crate) fn report(
    names: &[&str],
    r: &[Figures],
    root: &Path,
    s: &Settings,
    suites: &(String, String),
    nfs_note: &str,
) -> anyhow::Result<()> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let opt = |v: &[f64], digits: usize| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.*} ({})", digits, med(v), range_digits(v, digits))
        }
    };
    println!("{cpu}, {cores} cores, {} repetitions; medians (min-max)\n", s.reps);
    println!(
        "| path | bulk MiB/s, 1 stream | bulk MiB/s, 4 streams | iperf3 up / down MiB/s | CPU s per GiB | added p50 us | added p99 us | p50 us | p99 us | added p50 / p99 us, one CPU | conn/s | RSS KiB per idle tunnel | nfs-cat {} MiB s | nfs-ls -R {} files s |",
        s.nfs_file_mib, s.nfs_tree_files
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut json = serde_json::Map::new();
    for (i, name) in names.iter().enumerate() {
        let f = &r[i];
        println!(
            "| {name} | {} | {} | {} / {} | {} | {:.0} | {:.0} | {} | {} | {:.0} / {:.0} | {} | {} | {} | {} |",
            opt(&f.bulk_mib_s, 0),
            opt(&f.bulk4_mib_s, 0),
            opt(&f.iperf_up_mib_s, 0),
            opt(&f.iperf_down_mib_s, 0),
            opt(&f.cpu_s_per_gib, 2),
            med(&f.p50_us) - med(&r[0].p50_us),
            med(&f.p99_us) - med(&r[0].p99_us),
            opt(&f.p50_us, 0),
            opt(&f.p99_us, 0),
            med(&f.p50_one_cpu_us) - med(&r[0].p50_one_cpu_us),
            med(&f.p99_one_cpu_us) - med(&r[0].p99_one_cpu_us),
            opt(&f.conns_per_s, 0),
            f.rss_kib_per_tunnel.map(|k| format!("{k:.1}")).unwrap_or_else(|| "-".into()),
            opt(&f.nfs_cat_s, 2),
            opt(&f.nfs_ls_s, 2),
        );
        let m = |v: &[f64]| if v.is_empty() { serde_json::Value::Null } else { serde_json::json!(med(v)) };
        json.insert(
            (*name).to_owned(),
            serde_json::json!({
                "bulk_mib_s": m(&f.bulk_mib_s), "bulk4_mib_s": m(&f.bulk4_mib_s),
                "iperf_up_mib_s": m(&f.iperf_up_mib_s), "iperf_down_mib_s": m(&f.iperf_down_mib_s),
                "cpu_s_per_gib": m(&f.cpu_s_per_gib),
                "p50_us": m(&f.p50_us), "p99_us": m(&f.p99_us),
                "p50_one_cpu_us": m(&f.p50_one_cpu_us), "p99_one_cpu_us": m(&f.p99_one_cpu_us), "conns_per_s": m(&f.conns_per_s),
                "rss_kib_per_tunnel": f.rss_kib_per_tunnel, "nfs_cat_s": m(&f.nfs_cat_s), "nfs_ls_s": m(&f.nfs_ls_s),
            }),
        );
    }
    let (st, o, d) = (&r[1], &r[2], &r[0]);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let added = |f: &Figures, d: &Figures, p: fn(&Figures) -> &Vec<f64>| med(p(f)) - med(p(d));
    // Latency added over direct, ours against stunnel's; lower is better, target half.
    let latency_target =
        |what, p: fn(&Figures) -> &Vec<f64>| (what, ratio(added(o, d, p), added(st, d, p)), 0.5, false);
    println!("\nTLS: stunnel {}, nfs-tls-proxy {}", suites.0, suites.1);
    if suites.0 != suites.1 {
        println!("!!! the two tunnels negotiated different suites; the comparison is not like for like");
    }
    let targets = [
        ("bulk, 1 stream (>= 2x)", ratio(med(&o.bulk_mib_s), med(&st.bulk_mib_s)), 2.0, true),
        ("bulk, 4 streams (>= 2x)", ratio(med(&o.bulk4_mib_s), med(&st.bulk4_mib_s)), 2.0, true),
        ("bulk, iperf3 up (>= 2x)", ratio(med(&o.iperf_up_mib_s), med(&st.iperf_up_mib_s)), 2.0, true),
        ("bulk, iperf3 down (>= 2x)", ratio(med(&o.iperf_down_mib_s), med(&st.iperf_down_mib_s)), 2.0, true),
        latency_target("added latency p50 (<= 0.5x)", |f| &f.p50_us),
        latency_target("added latency p99 (<= 0.5x)", |f| &f.p99_us),
        latency_target("added latency p50, all on one CPU (<= 0.5x)", |f| &f.p50_one_cpu_us),
        latency_target("added latency p99, all on one CPU (<= 0.5x)", |f| &f.p99_one_cpu_us),
        ("connections/s (>= 1.5x)", ratio(med(&o.conns_per_s), med(&st.conns_per_s)), 1.5, true),
        (
            "RSS per idle tunnel (<= 0.5x)",
            ratio(o.rss_kib_per_tunnel.unwrap_or(f64::NAN), st.rss_kib_per_tunnel.unwrap_or(f64::NAN)),
            0.5,
            false,
        ),
        (
            "nfs-cat time (<= 0.6x)",
            if o.nfs_cat_s.is_empty() { f64::NAN } else { ratio(med(&o.nfs_cat_s), med(&st.nfs_cat_s)) },
            0.6,
            false,
        ),
    ];
    println!("\nnfs-tls-proxy / stunnel:");
    let mut verdicts = serde_json::Map::new();
    for (what, x, target, higher) in targets {
        let met = if higher { x >= target } else { x <= target };
        println!(
            "- {what}: x{x:.2} {}",
            if x.is_nan() {
                "(not measured)"
            } else if met {
                "met"
            } else {
                "MISSED"
            }
        );
        verdicts.insert(what.to_owned(), serde_json::json!({ "ratio": x, "met": met }));
    }
    let cpu_ratio = ratio(med(&o.cpu_s_per_gib), med(&st.cpu_s_per_gib));
    println!("- CPU of both tunnel processes per GiB through iperf3: x{cpu_ratio:.2} (no target)");
    verdicts.insert("CPU per GiB".to_owned(), serde_json::json!({ "ratio": cpu_ratio }));
    if !nfs_note.is_empty() {
        println!("\n{nfs_note}");
    }
    json.insert("tls".into(), serde_json::json!({ "stunnel": suites.0, "nfs-tls-proxy": suites.1 }));
    json.insert("targets".into(), serde_json::Value::Object(verdicts));
    json.insert("machine".into(), serde_json::json!({ "cpu": cpu, "cores": cores, "reps": s.reps }));
    let out = root.join("target/bench-results.json");
    std::fs::write(&out, serde_json::to_string_pretty(&serde_json::Value::Object(json))?)
        .with_context(|| out.display().to_string())?;
    println!("written: {}", out.display());
    Ok(())
}

fn range_digits(v: &[f64], digits: usize) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.digits$}-{max:.digits$}")
}
