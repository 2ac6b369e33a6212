//! The hub's line cutting, rings, history and follow, without an app.

use super::*;

#[test]
fn lines_are_cut_whole_and_long_ones_split() {
    let mut pending = b"one\ntwo\nthr".to_vec();
    assert_eq!(take_lines(&mut pending, false), b"one\ntwo\n");
    assert_eq!(pending, b"thr");
    pending.extend_from_slice(b"ee\n");
    assert_eq!(take_lines(&mut pending, false), b"three\n");

    let mut long = vec![b'x'; MAX_LINE * 2 + 10];
    let out = take_lines(&mut long, false);
    assert_eq!(out.len(), 2 * (MAX_LINE + 1));
    assert_eq!(long.len(), 10, "the short remainder waits for its newline");
    assert_eq!(
        take_lines(&mut long, true).len(),
        11,
        "and is flushed at EOF"
    );
    let mut empty_lines = b"\n\n".to_vec();
    assert_eq!(take_lines(&mut empty_lines, false), b"\n\n");
    assert!(lines_fit(b"short\nlines\ntail"));
    assert!(!lines_fit(&vec![b'x'; MAX_LINE + 1]));
}

fn logs(hub: &LogHub, dir: &Path, format: LineFormat) -> Arc<InstanceLogs> {
    Arc::new(InstanceLogs {
        id: format.id,
        app: Arc::from(format.app.as_str()),
        namespace: Arc::from("default"),
        instance: 0,
        out: Some(
            hub.file(&dir.join("out.log"), &Rotation::default())
                .unwrap(),
        ),
        err: Some(
            hub.file(&dir.join("err.log"), &Rotation::default())
                .unwrap(),
        ),
        combined: Some(
            hub.file(&dir.join("all.log"), &Rotation::default())
                .unwrap(),
        ),
        format,
    })
}

#[tokio::test]
async fn pumps_write_files_keep_history_and_feed_followers() {
    let dir = tempfile::tempdir().unwrap();
    let hub = LogHub::new();
    let format = LineFormat {
        date: None,
        json: false,
        app: "api".into(),
        id: 7,
    };
    let instance = logs(&hub, dir.path(), format);
    let mut follower = hub.subscribe();
    let (out_r, out_w) = nix::unistd::pipe().unwrap();
    let (err_r, err_w) = nix::unistd::pipe().unwrap();
    let (mut out_w, mut err_w) = (std::fs::File::from(out_w), std::fs::File::from(err_w));
    hub.capture(instance.clone(), Stream::Out, out_r, b"hel".to_vec());
    hub.capture(instance, Stream::Err, err_r, Vec::new());
    use std::io::Write;
    out_w.write_all(b"lo\nwor").unwrap();
    err_w.write_all(b"oops\n").unwrap();
    out_w.write_all(b"ld\nlast without newline").unwrap();
    drop(out_w);
    drop(err_w);

    let mut followed = Vec::new();
    while followed.len() < 4 {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), follower.recv())
            .await
            .unwrap()
            .unwrap();
        followed.extend(
            chunk
                .lines()
                .map(|l| String::from_utf8_lossy(l).into_owned()),
        );
    }
    assert!(followed.contains(&"last without newline".to_string()));

    let out = std::fs::read_to_string(dir.path().join("out.log")).unwrap();
    assert_eq!(out, "hello\nworld\nlast without newline\n");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("err.log")).unwrap(),
        "oops\n"
    );
    let all = std::fs::read_to_string(dir.path().join("all.log")).unwrap();
    assert_eq!(all.lines().count(), 4);

    let (history, _) = hub.history(&|_| true, 2, Some(Stream::Out), None);
    let lines: Vec<_> = history.iter().map(|(_, _, l)| l.as_str()).collect();
    assert_eq!(lines, ["world", "last without newline"]);
    // Each line's number in its instance's stream: the chunk's start and its place.
    let numbers: Vec<u64> = (history.iter())
        .map(|(chunk, index, _)| chunk.first_line + *index as u64 + 1)
        .collect();
    assert_eq!(numbers, [2, 3]);
    let (history, _) = hub.history(&|c| c.id == 8, 10, None, None);
    assert!(history.is_empty());
}

#[tokio::test]
async fn a_handover_keeps_the_unfinished_line_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let format = || LineFormat {
        date: None,
        json: false,
        app: "api".into(),
        id: 7,
    };
    let first = LogHub::new();
    let (read, write) = nix::unistd::pipe().unwrap();
    let mut write = std::fs::File::from(write);
    first.capture(
        logs(&first, dir.path(), format()),
        Stream::Out,
        read,
        Vec::new(),
    );
    use std::io::Write;
    write.write_all(b"one\ntw").unwrap();
    let out = dir.path().join("out.log");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::fs::read_to_string(&out).unwrap_or_default() != "one\n" {
        assert!(
            std::time::Instant::now() < until,
            "the first line is written"
        );
        tokio::task::yield_now().await;
    }
    let mut carried = first.hand_over().await;
    assert_eq!(carried.len(), 1);
    let pipe = carried.pop().unwrap();
    assert_eq!(
        (pipe.id, pipe.stream, pipe.pending.as_slice()),
        (7, Stream::Out, &b"tw"[..])
    );
    // Written while no image reads: it waits in the pipe.
    write.write_all(b"o\nthree\n").unwrap();
    drop(write);
    let second = LogHub::new();
    let mut follower = second.subscribe();
    let instance = logs(&second, dir.path(), format());
    second.capture(instance, pipe.stream, pipe.fd, pipe.pending);
    let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), follower.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&*chunk.data, b"two\nthree\n");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::fs::read_to_string(&out).unwrap() != "one\ntwo\nthree\n" {
        assert!(
            std::time::Instant::now() < until,
            "every line once, in order"
        );
        tokio::task::yield_now().await;
    }
}
