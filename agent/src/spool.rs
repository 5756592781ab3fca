//! placeholder: spool
