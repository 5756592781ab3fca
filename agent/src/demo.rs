//! placeholder: demo
