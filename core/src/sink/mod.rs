//! Sinks: where core makes events durable. `deliver` returns only when every event of every
//! batch is stored (DESIGN rule 6); an error means "nothing may be acked", never "skip".

mod file;
mod kafka;
mod producer_health;

pub use file::{
    DEAD_LETTER_FILE as DEAD_LETTER_FILE_NAME, EVENTS_FILE as EVENTS_FILE_NAME, FileSink,
    OVERFLOW_FILE as OVERFLOW_FILE_NAME,
};
pub use kafka::{KafkaSink, event_headers as kafka_event_headers, producer_config};

use sluice_wire::BatchRecord;

use crate::config::SinkConfig;
use crate::producer_metrics::ProducerMetrics;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("file sink: {0}")]
    Io(#[from] std::io::Error),
    #[error("kafka: {0}")]
    Kafka(String),
}

pub enum Sink {
    File(FileSink),
    Kafka(Box<KafkaSink>),
}

impl Sink {
    pub fn from_config(config: &SinkConfig, metrics: &ProducerMetrics) -> Result<Self, SinkError> {
        Ok(match config {
            SinkConfig::File { dir } => Sink::File(FileSink::open(dir)?),
            SinkConfig::Kafka(k) => Sink::Kafka(Box::new(KafkaSink::new(k, metrics.clone())?)),
        })
    }

    pub async fn deliver(&self, batches: &[&BatchRecord]) -> Result<(), SinkError> {
        match self {
            Sink::File(s) => s.deliver(batches).await,
            Sink::Kafka(s) => s.deliver(batches).await,
        }
    }
}
