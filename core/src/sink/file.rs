//! The embedded sink: one NDJSON file per stream, fsync'd before `deliver` returns.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sluice_wire::{BatchRecord, Stream};

use super::SinkError;

pub const EVENTS_FILE: &str = "events.ndjson";
pub const DEAD_LETTER_FILE: &str = "dead-letter.ndjson";
pub const OVERFLOW_FILE: &str = "overflow.ndjson";

/// The sink's files, indexed by [`slot`].
type Files = [File; 3];

fn slot(stream: Stream) -> usize {
    match stream {
        Stream::Events => 0,
        Stream::DeadLetter => 1,
        Stream::Overflow => 2,
    }
}

pub struct FileSink {
    dir: PathBuf,
    files: Arc<Mutex<Files>>,
}

impl FileSink {
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let open = |name| OpenOptions::new().create(true).append(true).open(dir.join(name));
        let files = [open(EVENTS_FILE)?, open(DEAD_LETTER_FILE)?, open(OVERFLOW_FILE)?];
        File::open(dir)?.sync_all()?;
        Ok(Self { dir: dir.to_path_buf(), files: Arc::new(Mutex::new(files)) })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub async fn deliver(&self, batches: &[&BatchRecord]) -> Result<(), SinkError> {
        let mut data: [Vec<u8>; 3] = Default::default();
        for batch in batches {
            let out = &mut data[slot(batch.stream)];
            for e in &batch.events {
                batch.write_event_json(e, out);
                out.push(b'\n');
            }
        }
        let files = self.files.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = files.lock().map_err(|_| std::io::Error::other("file sink lock poisoned"))?;
            for (file, data) in guard.iter_mut().zip(&data) {
                if !data.is_empty() {
                    file.write_all(data)?;
                    file.sync_data()?;
                }
            }
            Ok::<_, std::io::Error>(())
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
        Ok(())
    }
}
