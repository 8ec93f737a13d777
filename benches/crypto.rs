//! `Kms::encrypt` / `decrypt` against the raw AEAD they wrap, in the same run.
//!
//! The raw baseline is the backend this build uses (aes-gcm by default, ring with
//! `--features ring`), with the key schedule built once, the same payload and the same
//! context length; it seals a copy of the payload in place, as `Kms::encrypt` does. Its nonce
//! is a counter; `raw_getrandom` is the same seal with its nonce from the OS
//! (`keylife::crypto::fill_from_os`, one `getrandom` call), as `Kms::encrypt` takes one, and
//! `other/<backend>/fill_from_os_12` that call alone.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use keylife::{CreateKey, DataKeySpec, Kms, KmsOptions, RootKey};

const SIZES: [usize; 4] = [32, 1024, 16 * 1024, 1024 * 1024];
const CONTEXT: &[u8] = b"tenant=42;purpose=bench";

/// The raw AEAD of this build: seal a copy of `payload` in place and return it with its tag.
mod raw {
    #[cfg(not(feature = "ring"))]
    pub struct Raw(aes_gcm::Aes256Gcm);
    #[cfg(feature = "ring")]
    pub struct Raw(ring::aead::LessSafeKey);

    impl Raw {
        pub fn new() -> Raw {
            #[cfg(not(feature = "ring"))]
            {
                use aes_gcm::KeyInit;
                Raw(aes_gcm::Aes256Gcm::new(&[7u8; 32].into()))
            }
            #[cfg(feature = "ring")]
            {
                let key = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &[7; 32]).unwrap();
                Raw(ring::aead::LessSafeKey::new(key))
            }
        }

        #[inline(never)]
        pub fn seal(&self, nonce: [u8; 12], aad: &[u8], payload: &[u8]) -> (Vec<u8>, [u8; 16]) {
            let mut buffer = payload.to_vec();
            #[cfg(not(feature = "ring"))]
            let tag: [u8; 16] = {
                use aes_gcm::aead::AeadInOut;
                self.0
                    .encrypt_inout_detached(&nonce.into(), aad, buffer.as_mut_slice().into())
                    .unwrap()
                    .into()
            };
            #[cfg(feature = "ring")]
            let tag: [u8; 16] = {
                let tag = self
                    .0
                    .seal_in_place_separate_tag(
                        ring::aead::Nonce::assume_unique_for_key(nonce),
                        ring::aead::Aad::from(aad),
                        &mut buffer,
                    )
                    .unwrap();
                tag.as_ref().try_into().unwrap()
            };
            (buffer, tag)
        }

        #[inline(never)]
        pub fn open(&self, nonce: [u8; 12], aad: &[u8], sealed: &(Vec<u8>, [u8; 16])) -> Vec<u8> {
            let mut buffer = sealed.0.clone();
            #[cfg(not(feature = "ring"))]
            {
                use aes_gcm::aead::AeadInOut;
                self.0
                    .decrypt_inout_detached(
                        &nonce.into(),
                        aad,
                        buffer.as_mut_slice().into(),
                        &sealed.1.into(),
                    )
                    .unwrap();
            }
            #[cfg(feature = "ring")]
            {
                self.0
                    .open_in_place_separate_tag(
                        ring::aead::Nonce::assume_unique_for_key(nonce),
                        ring::aead::Aad::from(aad),
                        ring::aead::Tag::from(sealed.1),
                        &mut buffer,
                        0..,
                    )
                    .unwrap();
            }
            buffer
        }
    }
}

fn crypto(c: &mut Criterion) {
    let kms =
        Kms::open_in_memory(RootKey::from_bytes(&mut [1; 32]), KmsOptions::new("bench")).unwrap();
    let id = kms.create_key(&CreateKey::new("bench")).unwrap().id;
    let raw = raw::Raw::new();
    let backend = keylife::crypto::BACKEND;
    let mut nonce_counter = 0u64;
    let mut nonce = move || {
        nonce_counter += 1;
        let mut n = [0; 12];
        n[..8].copy_from_slice(&nonce_counter.to_be_bytes());
        n
    };

    let mut group = c.benchmark_group(format!("encrypt/{backend}"));
    for size in SIZES {
        let payload = vec![0xa5; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("raw", size), &payload, |b, p| {
            b.iter(|| raw.seal(nonce(), black_box(CONTEXT), black_box(p)));
        });
        // The raw seal with its nonce from the OS, as `Kms::encrypt` takes one per message.
        group.bench_with_input(BenchmarkId::new("raw_getrandom", size), &payload, |b, p| {
            b.iter(|| {
                let mut n = [0u8; 12];
                keylife::crypto::fill_from_os(&mut n).unwrap();
                raw.seal(n, black_box(CONTEXT), black_box(p))
            });
        });
        group.bench_with_input(BenchmarkId::new("kms", size), &payload, |b, p| {
            b.iter(|| {
                kms.encrypt(id, black_box(p), Some(black_box(CONTEXT)))
                    .unwrap()
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group(format!("decrypt/{backend}"));
    for size in SIZES {
        let payload = vec![0xa5; size];
        let raw_nonce = nonce();
        let raw_sealed = raw.seal(raw_nonce, CONTEXT, &payload);
        let sealed = kms.encrypt(id, &payload, Some(CONTEXT)).unwrap().ciphertext;
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("raw", size), &raw_sealed, |b, s| {
            b.iter(|| raw.open(raw_nonce, black_box(CONTEXT), black_box(s)));
        });
        group.bench_with_input(BenchmarkId::new("kms", size), &sealed, |b, s| {
            b.iter(|| {
                kms.decrypt(id, black_box(s), Some(black_box(CONTEXT)))
                    .unwrap()
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group(format!("other/{backend}"));
    // One OS random call of a nonce's size: what each encryption adds to the raw seal.
    group.bench_function("fill_from_os_12", |b| {
        b.iter(|| {
            let mut n = [0u8; 12];
            keylife::crypto::fill_from_os(black_box(&mut n)).unwrap();
            n
        });
    });
    group.bench_function("generate_data_key", |b| {
        b.iter(|| {
            kms.generate_data_key(id, DataKeySpec::Aes256, Some(CONTEXT))
                .unwrap()
        });
    });
    let other = kms.create_key(&CreateKey::new("other")).unwrap().id;
    let sealed = kms
        .encrypt(id, &[0xa5; 1024], Some(CONTEXT))
        .unwrap()
        .ciphertext;
    group.bench_function("re_encrypt_1KiB", |b| {
        b.iter(|| {
            kms.re_encrypt(id, black_box(&sealed), Some(CONTEXT), other, Some(CONTEXT))
                .unwrap()
        });
    });
    group.finish();
}

criterion_group!(benches, crypto);
criterion_main!(benches);
