//! Migrating from stunnel: the f3s stunnel configurations convert into configurations that `check`
//! accepts and that run and carry traffic; `check` fails with one line per problem.

mod support;

use std::process::Command;

use support::*;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nfs-tls-proxy"))
}

/// `convert-stunnel conf` into `toml`; returns stderr (the warnings).
fn convert(conf: &std::path::Path, toml: &std::path::Path) -> String {
    let out = bin().arg("convert-stunnel").arg(conf).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(toml, &out.stdout).expect("write toml");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn check(toml: &std::path::Path) -> (bool, String, String) {
    let out = bin().args(["check", "--config"]).arg(toml).output().expect("run");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_f3s_stunnel_configs_convert_into_configs_that_check_clean_and_carry_traffic() {
    let dir = TestPki::new();
    let d = dir.root();
    let backend = EchoBackend::start();
    let (server_port, client_port) = (free_port(), free_port());
    // The f3s server and client stunnel.conf, pointed at this test's PKI and loopback.
    let server_conf = write(
        d,
        "server-stunnel.conf",
        &format!(
            "; f0 and f1\ncert = {}\nkey = {}\n\n[nfs-tls]\naccept = 127.0.0.1:{server_port}\nconnect = {}\n\
             CAfile = {}\nverify = 2\nrequireCert = yes\n",
            p(d, "f3s-storage-ha-cert.pem"),
            p(d, "f3s-storage-ha-key.pem"),
            backend.addr,
            p(d, "ca-cert.pem")
        ),
    );
    let client_conf = write(
        d,
        "client-stunnel.conf",
        &format!(
            "cert = {}\nCAfile = {}\nclient = yes\nverify = 2\n\n[nfs-ha]\naccept = 127.0.0.1:{client_port}\n\
             connect = 127.0.0.1:{server_port}\n",
            p(d, "r0-stunnel.pem"),
            p(d, "ca-cert.pem")
        ),
    );
    let (server_toml, client_toml) = (d.join("server.toml"), d.join("client.toml"));
    let warnings = convert(&server_conf, &server_toml);
    assert!(warnings.contains("any certificate the CA ever signed"), "{warnings}");
    convert(&client_conf, &client_toml);

    let (ok, out, err) = check(&server_toml);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("mode           server") && out.contains("chains to the CA as a server certificate"),
        "{out}"
    );
    let server = Proc::proxy(&["server", "--config", server_toml.to_str().expect("utf8")]);
    server.listen_addr();
    let (ok, out, err) = check(&client_toml);
    assert!(ok, "{out}{err}");
    assert!(out.contains("server cert") && out.contains("carries 127.0.0.1"), "{out}");

    let client = Proc::proxy(&["client", "--config", client_toml.to_str().expect("utf8")]);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    assert_eq!(echo_through_blocking(client.listen_addr(), &data), data);
    server.wait_line(&["tunnel closed", "identity=r0", "bytes_up=300000"]);
}

#[test]
fn check_fails_with_one_line_per_problem() {
    let dir = TestPki::new();
    let d = dir.root();
    let toml = write(
        d,
        "broken.toml",
        &format!(
            "listen = [\"127.0.0.1:0\"]\nbackend = \"127.0.0.1:2049\"\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
            p(d, "f3s-storage-ha-cert.pem"),
            p(d, "r0-key.pem"),
            p(d, "ca-cert.pem")
        ),
    );
    let (ok, _, err) = check(&toml);
    assert!(!ok);
    let problems: Vec<&str> = err.lines().filter(|l| l.starts_with("problem: ")).collect();
    assert_eq!(problems.len(), 1, "{err}");
    assert!(problems[0].contains("r0-key.pem: does not match the certificate"), "{err}");

    let unknown = write(d, "what.toml", "listen = [\"127.0.0.1:0\"]\n");
    let (ok, _, err) = check(&unknown);
    assert!(!ok && err.contains("cannot tell whether this is a server"), "{err}");
}

#[test]
fn untranslatable_stunnel_options_fail_naming_the_line() {
    let dir = TestPki::new();
    let conf =
        write(dir.root(), "bad.conf", "[x]\naccept = 2323\nconnect = 127.0.0.1:2049\nverifyPeer = yes\n");
    let out = bin().arg("convert-stunnel").arg(&conf).output().expect("run");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing half-written to stdout");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.conf:4: verifyPeer = yes: pinning the peer certificate is not supported"),
        "{err}"
    );
}

#[test]
fn man_pages_and_completions_are_generated_from_the_flags() {
    let dir = tempfile::tempdir().expect("dir");
    let out = bin().args(["manual", "--out"]).arg(dir.path()).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let server_man =
        std::fs::read_to_string(dir.path().join("man/nfs-tls-proxy-server.1")).expect("man page");
    assert!(server_man.contains("allow\\-cn") || server_man.contains("allow-cn"), "{server_man}");
    assert!(dir.path().join("completions/nfs-tls-proxy.bash").is_file());
}
