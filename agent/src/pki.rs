//! placeholder: pki
