//! The gRPC codec of every fleet service: prost's, with smaller first buffers.
//!
//! tonic gives each stream an encoding and a decoding buffer of 8 KiB, kept for the
//! stream's life. A controller holds one long stream per agent whose messages are a
//! few hundred bytes (heartbeats, deltas), so 10,000 agents held 160 MiB of buffers
//! that were almost always empty. Buffers start at `BUFFER` and grow with the message
//! (a `Status` of thousands of hosts still encodes in one buffer).

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Each stream's first encoding and decoding buffer.
const BUFFER: usize = 1024;
/// A stream's encoder yields to the transport past this many buffered bytes (tonic's
/// default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// `tonic_prost::ProstCodec` with `BUFFER`-sized first buffers (`build.rs` names it
/// as every service's codec).
#[derive(Debug, Clone)]
pub struct FleetCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for FleetCodec<T, U> {
    fn default() -> Self {
        FleetCodec { _pd: PhantomData }
    }
}

impl<T, U> Codec for FleetCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
    }
}
