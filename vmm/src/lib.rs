//! mvrun's virtual machine monitor.
#![deny(missing_docs)]
