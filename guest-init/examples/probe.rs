//! Test helper copied into the test rootfs: makes one system call busybox cannot, prints the result.
//! `probe keyctl` (KEYCTL_GET_KEYRING_ID on the session keyring), `probe ptrace PID` (PTRACE_ATTACH).
//! Prints `ok` or `errno N`.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rc = match args.get(1).map(String::as_str) {
        // SAFETY: keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0) takes integers only.
        Some("keyctl") => unsafe { libc::syscall(libc::SYS_keyctl, 0, -3, 0) },
        Some("ptrace") => {
            let pid: i32 = args.get(2).and_then(|p| p.parse().ok()).unwrap_or(1);
            // SAFETY: PTRACE_ATTACH takes a pid and null pointers.
            unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, 0usize, 0usize) }
        }
        _ => {
            eprintln!("usage: probe keyctl | probe ptrace PID");
            std::process::exit(2);
        }
    };
    if rc < 0 {
        println!(
            "errno {}",
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        );
    } else {
        println!("ok");
    }
}
