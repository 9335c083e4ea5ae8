//! Micro-benchmarks of Switchyard live in `benches/benches/` (criterion); the side-by-side
//! load benchmarks against nginx and HAProxy are the shell scripts in `benches/`.
