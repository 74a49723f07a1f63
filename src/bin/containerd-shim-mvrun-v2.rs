//! `containerd-shim-mvrun-v2`: the containerd shim for runtime type `io.containerd.mvrun.v2`. containerd runs it
//! with `start`, `delete`, or as the long-lived shim server; see `mvrun::shim`.

fn main() {
    containerd_shim::run::<mvrun::shim::Service>(
        mvrun::shim::RUNTIME_ID,
        Some(mvrun::shim::config()),
    );
}
