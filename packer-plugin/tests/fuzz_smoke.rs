//! A bounded random run of the fuzz entry points on stable Rust (the real fuzzing
//! is `cargo +nightly fuzz run <target>` in packer-plugin/fuzz/). Inputs are random
//! bytes plus mutations of valid messages, from a fixed seed so failures repeat.

use packer_plugin::wire::{fuzzing, gob, msgpack, netrpc, yamux};
use rand::{Rng, SeedableRng, rngs::StdRng};

fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.random_range(1..8) {
        match rng.random_range(0..4) {
            0 if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                v[i] = rng.random();
            }
            1 if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                v.truncate(i);
            }
            2 => {
                let i = rng.random_range(0..=v.len());
                v.insert(i, rng.random());
            }
            _ => v.extend((0..rng.random_range(0..16)).map(|_| rng.random::<u8>())),
        }
    }
    v
}

fn seeds() -> Vec<Vec<u8>> {
    let spec = gob::encode_object_spec(&packer_plugin::config::spec());
    let mut ym = yamux::Header::new(yamux::FrameType::WindowUpdate, yamux::flags::SYN, 1, 0)
        .encode()
        .to_vec();
    ym.extend_from_slice(
        &yamux::Header::new(yamux::FrameType::Data, yamux::flags::FIN, 1, 4).encode(),
    );
    ym.extend_from_slice(&[0, 0, 0, 0]);
    vec![
        spec,
        gob::encode_command_finished(3),
        netrpc::encode_request(
            "Provisioner.Prepare",
            1,
            &msgpack::Value::map([("Configs", msgpack::Value::Array(vec![msgpack::Value::Nil]))]),
        ),
        ym,
    ]
}

#[test]
fn decoders_survive_random_and_mutated_input() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0006);
    let seeds = seeds();
    for i in 0..3000 {
        let input: Vec<u8> = if i % 2 == 0 {
            (0..rng.random_range(0..256))
                .map(|_| rng.random())
                .collect()
        } else {
            let s = &seeds[rng.random_range(0..seeds.len())];
            mutate(&mut rng, s)
        };
        fuzzing::msgpack(&input);
        fuzzing::gob(&input);
        if i % 10 == 0 {
            fuzzing::yamux(&input);
        }
    }
}
