#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| packer_plugin::wire::fuzzing::gob(data));
