//! The host's getrandom(2): never blocks once the host CRNG is initialised, which it is long before a VMM starts.

use super::EntropySource;

/// getrandom(2) with no flags.
#[derive(Debug, Default)]
pub struct Getrandom;

impl EntropySource for Getrandom {
    fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let rest = &mut buf[done..];
            // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes for the duration of the call.
            let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            done += n as usize;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_the_buffer() {
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        Getrandom.fill(&mut a).unwrap();
        Getrandom.fill(&mut b).unwrap();
        assert_ne!(a, b);
    }
}
