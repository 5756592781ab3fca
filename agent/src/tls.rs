//! placeholder: tls
