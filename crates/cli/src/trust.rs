//! `fleet controller trust [URL]`: shows the CA a controller presents and pins it once
//! the user confirmed its fingerprint (typed yes at a terminal, or `--fingerprint`),
//! so later commands verify the controller without `FLEET_CA` and never against the
//! public web PKI (`fleet_remote::stage::trust`).

use std::io::{BufRead, IsTerminal, Write};

use fleet_remote::stage::trust;

use crate::{ControllerCommand, Failure};

pub async fn run(command: ControllerCommand) -> Result<(), Failure> {
    let ControllerCommand::Trust { url, fingerprint } = command;
    let url = url
        .or_else(|| {
            std::env::var("FLEET_CONTROLLER")
                .ok()
                .filter(|u| !u.is_empty())
        })
        .ok_or_else(|| Failure::usage("which controller? pass its URL or set FLEET_CONTROLLER"))?;
    fleet_proto::ops::check_controller_url(&url).map_err(Failure::usage)?;
    let ca = trust::fetch_ca(&url).await.map_err(Failure::failed)?;
    let presented = trust::fingerprint(&ca);
    eprintln!("the controller at {url} presents a CA with SHA-256 fingerprint\n  {presented}");
    match fingerprint {
        Some(expected) => {
            let expected = expected.trim().to_ascii_uppercase();
            if expected != presented {
                return Err(Failure::failed(format!(
                    "the fingerprint you expected, {expected}, is not the one presented; nothing was pinned\nhint: someone may be intercepting the connection, or the expected fingerprint is of another CA"
                )));
            }
        }
        None if std::io::stdin().is_terminal() => {
            eprint!(
                "compare it with `openssl x509 -noout -fingerprint -sha256 -in ca.pem` on the controller's machine.\ntrust it? [y/N] "
            );
            let _ = std::io::stderr().flush();
            let mut answer = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut answer)
                .map_err(|e| Failure::failed(e.to_string()))?;
            if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
                return Err(Failure::failed("not trusted; nothing was pinned"));
            }
        }
        None => {
            return Err(Failure::usage(
                "no terminal to confirm on: pass --fingerprint with the CA's fingerprint",
            ));
        }
    }
    let path = trust::pin(&url, &ca).map_err(Failure::failed)?;
    println!("pinned the CA of {url} in {}", path.display());
    Ok(())
}
