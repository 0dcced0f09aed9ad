//! What can go wrong on a cluster link. Every variant is worded for an operator reading the
//! log of a parent or child; most mean the link is dropped and dialled again, which starts
//! over with a full frame.

use datafusion::arrow::error::ArrowError;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The connection failed or closed in the middle of a frame.
    #[error("link connection error: {0}")]
    Io(#[from] std::io::Error),

    /// A frame (or its decompressed payload) is larger than this side accepts.
    #[error("link frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge { size: u64, limit: u64 },

    /// A small compressed payload inflates past the ratio its receiver allows: a
    /// decompression bomb, refused before it is inflated.
    #[error("link frame refused: a compressed payload of {compressed} bytes inflates to {size} bytes or more, more than {ratio} times its size ([link] max_request_compression_ratio)")]
    Inflation {
        compressed: u64,
        size: u64,
        ratio: u64,
    },

    /// The peer went past one of this side's limits; the message names it and its key.
    #[error("link limit: {0}")]
    Limit(String),

    /// The bytes are not a valid frame: unknown codec, bad compression, bad serialization,
    /// truncated data. The peer is broken or not a Query link.
    #[error("corrupt link frame: {0}")]
    Decode(String),

    /// This side could not serialize a message (a bug, not the peer's fault).
    #[error("cannot encode link message: {0}")]
    Encode(String),

    /// The frame is well formed but does not fit what this side holds: a diff naming a part
    /// the parent does not have, an index out of range, a table without a known schema.
    /// The sides are out of step; reconnecting starts over with a full frame.
    #[error("link protocol violation: {0}")]
    Protocol(String),

    /// The peer speaks another version of the link protocol.
    #[error("link protocol version mismatch: this node speaks version {ours}, the peer {theirs}")]
    VersionMismatch { ours: u32, theirs: u32 },

    /// The peer refused the link and said why.
    #[error("link refused by peer: {0}")]
    Refused(String),

    /// The TLS handshake failed (`[link.tls]`): no, an untrusted, expired or misnamed
    /// certificate, or a peer without TLS. Nothing else was exchanged.
    #[error("TLS handshake failed: {message}")]
    Handshake {
        kind: crate::tls::HandshakeFailure,
        message: String,
    },

    /// The peer sent nothing for this long: it hangs, or the path to it does.
    #[error("nothing heard from the peer for {0:?}")]
    Silent(std::time::Duration),

    /// Arrow could not encode or decode a table's rows or schema.
    #[error("link Arrow data error: {0}")]
    Arrow(#[from] ArrowError),
}
