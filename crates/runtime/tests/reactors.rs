//! Real service modules from the Rust and C toolchains (built by
//! `scripts/build-guests.sh`): state kept between invocations and across a snapshot.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use nimbus_core::Limits;
use nimbus_runtime::{
    Invocation, InvokeError, ModuleBytes, Output, Runtime, RuntimeConfig, ServiceInstance,
};

fn guest(name: &str) -> ModuleBytes {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/guests")
        .join(format!("{name}.wasm"));
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/build-guests.sh", path.display()));
    ModuleBytes::new(bytes)
}

async fn start(
    runtime: &Runtime,
    module: &ModuleBytes,
    from: Option<&nimbus_snapshot::Snapshot>,
) -> ServiceInstance {
    let program = runtime.load_service(module).unwrap();
    let (spec, _mailbox) = common::spec(Limits::default(), Output::Null);
    let slot = runtime.admit().await;
    match runtime.start_service(&program, spec, slot, from).await {
        Ok(service) => service,
        Err(status) => panic!("service did not start: {status:?}"),
    }
}

async fn invoke(
    service: &mut ServiceInstance,
    handler: &str,
    body: &str,
) -> Result<String, InvokeError> {
    let out = service
        .invoke(Invocation {
            handler: handler.into(),
            body: body.as_bytes().to_vec(),
            max_response: 1 << 16,
            timeout: Some(Duration::from_secs(10)),
        })
        .await?;
    Ok(String::from_utf8(out).unwrap().trim().to_owned())
}

#[tokio::test]
async fn rust_and_c_services_keep_state_across_invocations_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(&RuntimeConfig::new(dir.path())).unwrap();
    for name in ["counter-service", "c-counter-service"] {
        let module = guest(name);
        let path = dir.path().join(format!("{name}.snap"));
        {
            let mut service = start(&runtime, &module, None).await;
            assert_eq!(
                invoke(&mut service, "add", "5").await.unwrap(),
                "5",
                "{name}"
            );
            assert_eq!(
                invoke(&mut service, "add", "7\n").await.unwrap(),
                "12",
                "{name}"
            );
            assert_eq!(
                invoke(&mut service, "add", "x").await,
                Err(InvokeError::Status(1))
            );
            assert_eq!(
                invoke(&mut service, "total", "").await.unwrap(),
                "12 2",
                "{name}"
            );
            service
                .snapshot(nimbus_snapshot::Owner {
                    app: name.to_string(),
                    instance: 0,
                })
                .write(&path)
                .unwrap();
        }
        let snapshot = nimbus_snapshot::read(&path).unwrap();
        let mut restored = start(&runtime, &module, Some(&snapshot)).await;
        assert_eq!(
            invoke(&mut restored, "add", "1").await.unwrap(),
            "13",
            "{name}"
        );
        assert_eq!(
            invoke(&mut restored, "total", "").await.unwrap(),
            "13 3",
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_body_left_unread_is_noted_in_the_apps_log_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(&RuntimeConfig::new(dir.path())).unwrap();
    let program = runtime.load_service(&guest("c-stdin-service")).unwrap();
    let log = nimbus_runtime::LogBuffer::new(64 << 10);
    let (mut spec, _mailbox) = common::spec(Limits::default(), Output::Null);
    spec.stderr = Output::Log(log.clone());
    let slot = runtime.admit().await;
    let mut service = match runtime.start_service(&program, spec, slot, None).await {
        Ok(service) => service,
        Err(status) => panic!("service did not start: {status:?}"),
    };
    let notes = || {
        let text = String::from_utf8(log.contents()).unwrap();
        text.matches("did not read all of its").count()
    };

    // A body without a newline: fgets reads to its end, and stdio's end-of-file flag
    // stays set for the next request, whose body is never read.
    assert_eq!(invoke(&mut service, "first_line", "5").await.unwrap(), "5");
    assert_eq!(notes(), 0);
    assert_eq!(
        invoke(&mut service, "first_line", "7").await,
        Err(InvokeError::Status(2))
    );
    assert_eq!(notes(), 1);
    let text = String::from_utf8(log.contents()).unwrap();
    assert!(
        text.contains("`first_line` did not read all of its 1-byte request body")
            && text.contains("clearerr(stdin)")
            && text.contains("nimbus_read_body()"),
        "{text}"
    );

    // The header's helper clears the flag and reads it all: nothing to note, and an
    // empty body is never noted either.
    assert_eq!(
        invoke(&mut service, "body_length", "hello").await.unwrap(),
        "5"
    );
    assert_eq!(invoke(&mut service, "body_length", "").await.unwrap(), "0");
    assert_eq!(notes(), 1);
}
