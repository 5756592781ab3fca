//! placeholder: app
