//! placeholder: journal
