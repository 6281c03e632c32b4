//! The checkpoint format: a compact, versioned binary encoding of a [`State`] followed by its BLAKE3
//! hash. The hash of the encoding (without the trailing hash) is the state hash that replicas compare.
//!
//! Layout, little-endian:
//! ```text
//! "UGMD" | format u32 | model u32 | step u64 | atoms u64 | types u32 | timestep f64
//! | box_origin 3 f64 | box_length 3 f64 | masses types f64 | pair (epsilon, sigma, cutoff) types² f64
//! | shift u8 | langevin u8 [temperature f64, damping f64, seed u64]
//! | ids atoms u64 | types atoms u32 | positions 3 atoms u64 | velocities 3 atoms i64 | blake3 32 bytes
//! ```

use std::fmt;
use std::io::Write;

use crate::model::MODEL_VERSION;
use crate::system::{ATOMS_MAX, ATOMS_MIN, Langevin, PairCoeff, Params, State, TYPES_MAX};
use crate::{KernelError, Result};

pub const MAGIC: [u8; 4] = *b"UGMD";
pub const FORMAT_VERSION: u32 = 1;
const HASH_BYTES: usize = 32;

const _: () = assert!(cfg!(target_endian = "little"), "checkpoints are encoded from little-endian memory");

/// BLAKE3 hash of an encoded state.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StateHash(pub [u8; 32]);

impl fmt::Display for StateHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for StateHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StateHash({self})")
    }
}

impl std::str::FromStr for StateHash {
    type Err = String;
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return Err(format!("a state hash has 64 hex digits, not {}", bytes.len()));
        }
        // `from_str_radix` alone would take a sign ("+f") as a digit.
        if let Some(position) = bytes.iter().position(|byte| !byte.is_ascii_hexdigit()) {
            return Err(format!("a state hash has only hex digits; character {} is not", position + 1));
        }
        let mut out = [0u8; 32];
        for (i, chunk) in bytes.chunks(2).enumerate() {
            let digits = std::str::from_utf8(chunk).map_err(|_| "not hex".to_string())?;
            out[i] = u8::from_str_radix(digits, 16).map_err(|_| format!("'{digits}' is not hex"))?;
        }
        Ok(StateHash(out))
    }
}

pub struct Checkpoint;

impl Checkpoint {
    /// The encoded state with its hash appended.
    pub fn encode(state: &State) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(Self::encoded_len(state));
        write_body(state, &mut bytes).expect("writing to memory");
        let hash = blake3::hash(&bytes);
        bytes.extend_from_slice(hash.as_bytes());
        bytes
    }

    /// The state hash without materialising the encoding.
    pub fn hash(state: &State) -> StateHash {
        let mut hasher = blake3::Hasher::new();
        write_body(state, &mut HashWriter(&mut hasher)).expect("hashing");
        StateHash(*hasher.finalize().as_bytes())
    }

    /// The hash stored at the end of an encoding (not verified).
    pub fn stored_hash(bytes: &[u8]) -> Option<StateHash> {
        let start = bytes.len().checked_sub(HASH_BYTES)?;
        Some(StateHash(bytes[start..].try_into().ok()?))
    }

    pub fn encoded_len(state: &State) -> usize {
        let types = state.params.types();
        4 + 4
            + 4
            + 8
            + 8
            + 4
            + 8
            + 48
            + 8 * types
            + 24 * types * types
            + 2
            + if state.params.langevin.is_some() { 24 } else { 0 }
            + state.atoms() * (8 + 4 + 24 + 24)
            + HASH_BYTES
    }

    /// Decodes and verifies an encoding: the hash first (so one flipped bit anywhere is reported as a
    /// hash mismatch before any field is trusted), then format, model version, the parameters and the
    /// atoms.
    pub fn decode(bytes: &[u8]) -> Result<State> {
        let Some(body_len) = bytes.len().checked_sub(HASH_BYTES) else {
            return Err(invalid(format!("{} bytes is shorter than its hash ({HASH_BYTES} bytes)", bytes.len())));
        };
        let (body, stored) = bytes.split_at(body_len);
        let computed = blake3::hash(body);
        if computed.as_bytes() != stored {
            return Err(invalid(format!(
                "state hash mismatch: the file says {}…, its {body_len} bytes hash to {}… (corrupted or truncated)",
                short_hex(stored),
                short_hex(computed.as_bytes())
            )));
        }
        let mut reader = Reader { bytes: body, offset: 0 };
        if reader.take(4)? != MAGIC {
            return Err(invalid("not an UpGlobe MD checkpoint (bad magic)".into()));
        }
        let format = reader.u32()?;
        if format != FORMAT_VERSION {
            return Err(invalid(format!("format version {format}; this build reads version {FORMAT_VERSION}")));
        }
        let model = reader.u32()?;
        if model != MODEL_VERSION {
            return Err(invalid(format!(
                "model version {model}; this build computes version {MODEL_VERSION}, so it cannot continue it bit for bit"
            )));
        }
        let state = read_state(&mut reader)?;
        if reader.offset != body.len() {
            return Err(invalid(format!(
                "{} trailing bytes after the atoms, at byte {}",
                body.len() - reader.offset,
                reader.offset
            )));
        }
        state.validate().map_err(|error| match error {
            KernelError::InvalidSystem(message) => invalid(message),
            other => other,
        })?;
        Ok(state)
    }
}

/// The first bytes of a hash in hex, enough to tell two hashes apart in a message.
fn short_hex(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|byte| format!("{byte:02x}")).collect()
}

fn invalid(message: String) -> KernelError {
    KernelError::InvalidCheckpoint(message)
}

fn read_state(reader: &mut Reader) -> Result<State> {
    let step = reader.u64()?;
    let atoms = reader.u64()?;
    let types = reader.u32()?;
    // Bounded before anything is allocated from them; the arrays are also bounded by the bytes present.
    if !(ATOMS_MIN as u64..=ATOMS_MAX as u64).contains(&atoms) || types == 0 || types as usize > TYPES_MAX {
        return Err(invalid(format!(
            "{atoms} atoms of {types} types; between {ATOMS_MIN} and {ATOMS_MAX} atoms of 1 to {TYPES_MAX} types are supported"
        )));
    }
    let (atoms, types) = (atoms as usize, types as usize);
    let timestep = reader.f64()?;
    let box_origin = [reader.f64()?, reader.f64()?, reader.f64()?];
    let box_length = [reader.f64()?, reader.f64()?, reader.f64()?];
    let masses = (0..types).map(|_| reader.f64()).collect::<Result<Vec<_>>>()?;
    let pair_coeffs = (0..types * types)
        .map(|_| Ok(PairCoeff { epsilon: reader.f64()?, sigma: reader.f64()?, cutoff: reader.f64()? }))
        .collect::<Result<Vec<_>>>()?;
    let shift = match reader.u8()? {
        0 => false,
        1 => true,
        other => return Err(invalid(format!("energy shift flag {other}; 0 or 1 expected"))),
    };
    let langevin = match reader.u8()? {
        0 => None,
        1 => Some(Langevin { temperature: reader.f64()?, damping: reader.f64()?, seed: reader.u64()? }),
        other => return Err(invalid(format!("unknown thermostat kind {other}"))),
    };
    let params = Params { box_origin, box_length, masses, pair_coeffs, shift, timestep, langevin };
    let ids: Vec<u64> = reader.array(atoms)?;
    let types_of_atoms: Vec<u32> = reader.array(atoms)?;
    let positions: Vec<[u64; 3]> = reader.array(atoms)?;
    let velocities: Vec<[i64; 3]> = reader.array(atoms)?;
    Ok(State { params, step, ids, types: types_of_atoms, positions, velocities })
}

fn write_body(state: &State, out: &mut impl Write) -> std::io::Result<()> {
    let p = &state.params;
    out.write_all(&MAGIC)?;
    out.write_all(&FORMAT_VERSION.to_le_bytes())?;
    out.write_all(&MODEL_VERSION.to_le_bytes())?;
    out.write_all(&state.step.to_le_bytes())?;
    out.write_all(&(state.atoms() as u64).to_le_bytes())?;
    out.write_all(&(p.types() as u32).to_le_bytes())?;
    let mut floats = vec![p.timestep];
    floats.extend(p.box_origin);
    floats.extend(p.box_length);
    floats.extend(&p.masses);
    floats.extend(p.pair_coeffs.iter().flat_map(|c| [c.epsilon, c.sigma, c.cutoff]));
    out.write_all(bytemuck::cast_slice(&floats))?;
    out.write_all(&[p.shift as u8])?;
    match p.langevin {
        None => out.write_all(&[0])?,
        Some(l) => {
            out.write_all(&[1])?;
            out.write_all(&l.temperature.to_le_bytes())?;
            out.write_all(&l.damping.to_le_bytes())?;
            out.write_all(&l.seed.to_le_bytes())?;
        }
    }
    out.write_all(bytemuck::cast_slice(&state.ids))?;
    out.write_all(bytemuck::cast_slice(&state.types))?;
    out.write_all(bytemuck::cast_slice(&state.positions))?;
    out.write_all(bytemuck::cast_slice(&state.velocities))?;
    Ok(())
}

struct HashWriter<'a>(&'a mut blake3::Hasher);

impl Write for HashWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.offset.checked_add(n).filter(|&end| end <= self.bytes.len()).ok_or_else(|| {
            invalid(format!("truncated at byte {} of {} (wanted {n} more)", self.offset, self.bytes.len()))
        })?;
        let slice = &self.bytes[self.offset..end];
        self.offset = end;
        Ok(slice)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn array<T: bytemuck::Pod>(&mut self, count: usize) -> Result<Vec<T>> {
        let bytes = self.take(count.saturating_mul(size_of::<T>()))?;
        Ok(bytemuck::pod_collect_to_vec(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::tests::two_atoms;

    #[test]
    fn round_trip_and_hash() {
        let state = State::from_physical(two_atoms(1.2)).unwrap();
        let bytes = Checkpoint::encode(&state);
        assert_eq!(bytes.len(), Checkpoint::encoded_len(&state));
        assert_eq!(Checkpoint::decode(&bytes).unwrap(), state);
        assert_eq!(Checkpoint::stored_hash(&bytes), Some(Checkpoint::hash(&state)));
        let text = Checkpoint::hash(&state).to_string();
        assert_eq!(text.parse::<StateHash>().unwrap(), Checkpoint::hash(&state));
        let signed = format!("+f{}", &text[2..]);
        assert!(signed.parse::<StateHash>().unwrap_err().contains("character 1"));
    }

    #[test]
    fn detects_corruption_and_versions() {
        let state = State::from_physical(two_atoms(1.2)).unwrap();
        let mut bytes = Checkpoint::encode(&state);
        bytes[100] ^= 1;
        assert!(Checkpoint::decode(&bytes).unwrap_err().to_string().contains("state hash mismatch"));
        let error = Checkpoint::decode(&bytes[..10]).unwrap_err().to_string();
        assert!(error.contains("shorter than its hash"), "{error}");
        let error = Checkpoint::decode(&bytes[..200]).unwrap_err().to_string();
        assert!(error.contains("state hash mismatch"), "{error}");

        let mut bytes = Checkpoint::encode(&state);
        bytes[8] = 99; // model version
        let body = bytes.len() - 32;
        let hash = blake3::hash(&bytes[..body]);
        bytes[body..].copy_from_slice(hash.as_bytes());
        assert!(Checkpoint::decode(&bytes).unwrap_err().to_string().contains("model version 99"));
    }

    #[test]
    fn hash_depends_on_every_part() {
        let state = State::from_physical(two_atoms(1.2)).unwrap();
        let mut moved = state.clone();
        moved.positions[1][2] += 1;
        let mut later = state.clone();
        later.step += 1;
        let mut hotter = state.clone();
        hotter.params.timestep = 0.004;
        let hashes = [&state, &moved, &later, &hotter].map(Checkpoint::hash);
        for i in 0..4 {
            for j in i + 1..4 {
                assert_ne!(hashes[i], hashes[j]);
            }
        }
    }
}
