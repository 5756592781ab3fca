//! placeholder: ctl
