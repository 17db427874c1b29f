//! Decodes arbitrary bytes as a sequence of replicated `Command`s and applies them to two
//! replicas. `State::apply` must never panic (a panic would stop every replica at the same
//! index) and must be deterministic: both replicas end equal.
#![no_main]

use kiln_state::pb::Command;
use kiln_state::State;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let mut first = State::default();
    let mut second = State::default();
    // Length-prefixed commands: one byte of length, then that many bytes, repeated.
    let mut rest = data;
    let mut index = 1;
    while let Some((&len, tail)) = rest.split_first() {
        let len = (len as usize).min(tail.len());
        let (bytes, tail) = tail.split_at(len);
        rest = tail;
        if let Ok(command) = Command::decode(bytes) {
            let a = first.apply(index, &command);
            let b = second.apply(index, &command);
            assert_eq!(a, b, "the same command gave two outcomes");
            index += 1;
        }
    }
    assert_eq!(first, second, "two replicas diverged");
});
