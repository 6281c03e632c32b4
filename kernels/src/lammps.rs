//! LAMMPS data files as written by `write_data` for `atom_style atomic` and `pair_style lj/cut`.
//!
//! Supported: the header counts (`atoms`, `atom types`; other counts must be zero), orthorhombic box
//! bounds, and the sections `Masses`, `Pair Coeffs`, `PairIJ Coeffs`, `Atoms` (atomic: `id type x y z
//! [ix iy iz]`) and `Velocities`. Anything else is reported as `file:line: what`.

use std::collections::HashMap;
use std::path::Path;

use crate::system::{
    ATOMS_MAX, BOX_LENGTH_RANGE, BOX_ORIGIN_RANGE, CUTOFF_RANGE, EPSILON_RANGE, MASS_RANGE, PairCoeff, Params,
    PhysicalSystem, SIGMA_RANGE, TYPES_MAX,
};
use crate::{KernelError, Result};

/// How to complete a data file into a system: what LAMMPS takes from the input script.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Global cutoff (`pair_style lj/cut RC`), used where the file gives none.
    pub cutoff: f64,
    pub shift: bool,
    pub timestep: f64,
}

/// The contents of a data file.
#[derive(Debug, Clone, Default)]
pub struct DataFile {
    pub title: String,
    pub types: usize,
    pub box_low: [f64; 3],
    pub box_high: [f64; 3],
    pub masses: Vec<Option<f64>>,
    /// Per-type coefficients (epsilon, sigma, optional cutoff), mixed geometrically for unlike pairs.
    pub type_coeffs: Vec<Option<(f64, f64, Option<f64>)>>,
    /// Explicit pair coefficients, keyed by (low type, high type), 0-based.
    pub pair_coeffs: HashMap<(usize, usize), (f64, f64, Option<f64>)>,
    pub ids: Vec<u64>,
    pub atom_types: Vec<u32>,
    pub positions: Vec<[f64; 3]>,
    pub velocities: HashMap<u64, [f64; 3]>,
    pub timestep_number: u64,
}

struct Parser<'a> {
    path: &'a str,
    lines: Vec<(usize, &'a str)>,
    next: usize,
}

const SECTIONS_UNSUPPORTED: &[&str] = &[
    "Bonds",
    "Angles",
    "Dihedrals",
    "Impropers",
    "Bond Coeffs",
    "Angle Coeffs",
    "Dihedral Coeffs",
    "Improper Coeffs",
    "Ellipsoids",
    "Lines",
    "Triangles",
    "Bodies",
    "BondBond Coeffs",
    "BondAngle Coeffs",
];

impl<'a> Parser<'a> {
    fn error(&self, line: usize, message: impl Into<String>) -> KernelError {
        KernelError::DataFile { path: self.path.to_string(), line, message: message.into() }
    }

    /// The next non-blank line with comments removed, and its 1-based number.
    fn next_line(&mut self) -> Option<(usize, &'a str)> {
        while self.next < self.lines.len() {
            let (number, text) = self.lines[self.next];
            self.next += 1;
            let text = text.split('#').next().unwrap_or("").trim();
            if !text.is_empty() {
                return Some((number, text));
            }
        }
        None
    }

    fn peek_line(&mut self) -> Option<(usize, &'a str)> {
        let saved = self.next;
        let line = self.next_line();
        self.next = saved;
        line
    }

    fn comment_of(&self, number: usize) -> Option<&'a str> {
        self.lines[number - 1].1.split_once('#').map(|(_, c)| c.trim())
    }

    fn numbers<const N: usize>(&self, number: usize, fields: &[&str], what: &str) -> Result<[f64; N]> {
        let mut out = [0.0; N];
        for (k, slot) in out.iter_mut().enumerate() {
            let text = fields[k];
            *slot = text
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| self.error(number, format!("{what}: '{text}' is not a finite number")))?;
        }
        Ok(out)
    }
}

/// `low high` box bounds of axis `d`, checked on their line.
fn check_bounds(parser: &Parser, number: usize, fields: &[&str], d: usize) -> Result<[f64; 2]> {
    let [low, high] = parser.numbers::<2>(number, fields, "box bounds")?;
    let axis = crate::system::axis(d);
    for (name, value) in [("lo", low), ("hi", high)] {
        BOX_ORIGIN_RANGE.check(value).map_err(|reason| parser.error(number, format!("{axis}{name} {reason}")))?;
    }
    BOX_LENGTH_RANGE
        .check(high - low)
        .map_err(|reason| parser.error(number, format!("box length {axis}hi - {axis}lo {reason}")))?;
    Ok([low, high])
}

/// `epsilon sigma [cutoff]` of one `Pair Coeffs` or `PairIJ Coeffs` line, each checked on its own;
/// sigma against the cutoff when the line gives one (a global cutoff is checked with the system).
fn read_coefficients(parser: &Parser, number: usize, fields: &[&str]) -> Result<(f64, f64, Option<f64>)> {
    let [epsilon, sigma] = parser.numbers::<2>(number, fields, "pair coefficient")?;
    let cutoff = match fields.get(2) {
        Some(_) => Some(parser.numbers::<1>(number, &fields[2..], "cutoff")?[0]),
        None => None,
    };
    if !(epsilon == 0.0 || EPSILON_RANGE.contains(epsilon)) {
        let (min, max) = (EPSILON_RANGE.min, EPSILON_RANGE.max);
        return Err(
            parser.error(number, format!("epsilon is {epsilon:?}; it must be 0 or between {min:?} and {max:?}"))
        );
    }
    SIGMA_RANGE.check(sigma).map_err(|reason| parser.error(number, format!("sigma {reason}")))?;
    if let Some(cutoff) = cutoff {
        CUTOFF_RANGE.check(cutoff).map_err(|reason| parser.error(number, format!("cutoff {reason}")))?;
        crate::system::check_pair(PairCoeff { epsilon, sigma, cutoff })
            .map_err(|reason| parser.error(number, reason))?;
    }
    Ok((epsilon, sigma, cutoff))
}

fn parse_index(text: &str) -> Option<u64> {
    text.parse::<u64>().ok()
}

/// Largest LAMMPS data file read: a few hundred bytes per atom at the most atoms supported.
pub const DATA_FILE_BYTES_MAX: u64 = 64 << 30;

impl DataFile {
    /// Reads a data file of at most [`DATA_FILE_BYTES_MAX`]: a device or a pipe named by mistake
    /// (`/dev/zero`) is refused rather than read forever.
    pub fn read(path: &Path) -> Result<DataFile> {
        use std::io::Read;
        let io = |source| KernelError::Io { path: path.display().to_string(), cause: source };
        let file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(KernelError::InvalidSystem(format!("{} is not a regular file", path.display())));
        }
        let mut text = String::new();
        file.take(DATA_FILE_BYTES_MAX + 1).read_to_string(&mut text).map_err(io)?;
        if text.len() as u64 > DATA_FILE_BYTES_MAX {
            return Err(KernelError::InvalidSystem(format!(
                "{} is larger than {DATA_FILE_BYTES_MAX} bytes, more than any supported system needs",
                path.display()
            )));
        }
        DataFile::parse(&path.display().to_string(), &text)
    }

    pub fn parse(path: &str, text: &str) -> Result<DataFile> {
        let lines: Vec<(usize, &str)> = text.lines().enumerate().map(|(i, l)| (i + 1, l)).collect();
        let mut parser = Parser { path, lines, next: 1 };
        let mut data = DataFile { title: text.lines().next().unwrap_or("").trim().to_string(), ..Default::default() };
        if let Some(t) = data.title.split("timestep = ").nth(1) {
            data.timestep_number = t.trim().parse().unwrap_or(0);
        }
        let atoms = data.read_header(&mut parser)?;
        let mut seen = Vec::new();
        while let Some((number, text)) = parser.next_line() {
            if seen.contains(&text) {
                return Err(parser.error(number, format!("section '{text}' appears twice")));
            }
            seen.push(text);
            match text {
                "Masses" => data.read_masses(&mut parser)?,
                "Pair Coeffs" => data.read_type_coeffs(&mut parser, number)?,
                "PairIJ Coeffs" => data.read_pair_coeffs(&mut parser)?,
                "Atoms" => data.read_atoms(&mut parser, number, atoms)?,
                "Velocities" => data.read_velocities(&mut parser, atoms)?,
                other if SECTIONS_UNSUPPORTED.contains(&other) => {
                    return Err(parser.error(
                        number,
                        format!("section '{other}' is not supported: only atomic systems with lj/cut are"),
                    ));
                }
                other => return Err(parser.error(number, format!("unknown section '{other}'"))),
            }
        }
        if data.ids.is_empty() {
            return Err(parser.error(parser.lines.len(), "no Atoms section"));
        }
        Ok(data)
    }

    fn read_header(&mut self, parser: &mut Parser) -> Result<usize> {
        let mut atoms = None;
        let mut bounds = [None; 3];
        while let Some((number, text)) = parser.peek_line() {
            let fields: Vec<&str> = text.split_whitespace().collect();
            let keyword = fields.iter().skip_while(|f| f.parse::<f64>().is_ok()).copied().collect::<Vec<_>>().join(" ");
            let count = || {
                parse_index(fields[0]).ok_or_else(|| parser.error(number, format!("'{}' is not a count", fields[0])))
            };
            match keyword.as_str() {
                "atoms" => {
                    let count = count()?;
                    if count > ATOMS_MAX as u64 {
                        return Err(parser.error(number, format!("{count} atoms; at most {ATOMS_MAX} are supported")));
                    }
                    atoms = Some(count as usize);
                }
                "atom types" => {
                    let count = count()?;
                    if !(1..=TYPES_MAX as u64).contains(&count) {
                        return Err(parser
                            .error(number, format!("{count} atom types; between 1 and {TYPES_MAX} are supported")));
                    }
                    self.types = count as usize;
                }
                "xlo xhi" | "ylo yhi" | "zlo zhi" => {
                    let d = (keyword.as_bytes()[0] - b'x') as usize;
                    bounds[d] = Some(check_bounds(parser, number, &fields, d)?);
                }
                "xy xz yz" => return Err(parser.error(number, "triclinic boxes are not supported")),
                "bonds"
                | "angles"
                | "dihedrals"
                | "impropers"
                | "bond types"
                | "angle types"
                | "dihedral types"
                | "improper types"
                | "extra bond per atom"
                | "extra angle per atom"
                | "extra dihedral per atom"
                | "extra improper per atom"
                | "extra special per atom"
                | "ellipsoids"
                | "lines"
                | "triangles"
                | "bodies" => {
                    if count()? != 0 {
                        return Err(
                            parser.error(number, format!("'{keyword}' is not supported: only atomic systems are"))
                        );
                    }
                }
                _ if fields.first().is_some_and(|f| f.parse::<f64>().is_ok()) => {
                    return Err(parser.error(number, format!("unknown header line '{text}'")));
                }
                _ => break,
            }
            parser.next_line();
        }
        let atoms = atoms.ok_or_else(|| parser.error(1, "the header has no 'atoms' count"))?;
        if self.types == 0 {
            return Err(parser.error(1, "the header has no 'atom types' count"));
        }
        for (d, bound) in bounds.iter().enumerate() {
            let [low, high] = bound.ok_or_else(|| {
                parser.error(1, format!("the header has no '{0}lo {0}hi' box bounds", ['x', 'y', 'z'][d]))
            })?;
            self.box_low[d] = low;
            self.box_high[d] = high;
        }
        self.masses = vec![None; self.types];
        self.type_coeffs = vec![None; self.types];
        Ok(atoms)
    }

    fn type_index(&self, parser: &Parser, number: usize, text: &str) -> Result<usize> {
        match parse_index(text) {
            Some(t) if t >= 1 && t as usize <= self.types => Ok(t as usize - 1),
            _ => Err(parser.error(number, format!("atom type '{text}' is not between 1 and {}", self.types))),
        }
    }

    fn section_lines<'p>(
        parser: &mut Parser<'p>,
        count: usize,
        columns: &[usize],
        section: &str,
    ) -> Result<Vec<(usize, Vec<&'p str>)>> {
        // A count field cannot make us reserve more than the lines the file has.
        let mut out = Vec::with_capacity(count.min(parser.lines.len()));
        for k in 0..count {
            let Some((number, text)) = parser.next_line() else {
                return Err(parser.error(
                    parser.lines.len(),
                    format!("section '{section}' ends after {k} lines; {count} were expected"),
                ));
            };
            let fields: Vec<&str> = text.split_whitespace().collect();
            if !columns.contains(&fields.len()) {
                let expected = columns.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(" or ");
                return Err(
                    parser.error(number, format!("{section} line has {} columns; expected {expected}", fields.len()))
                );
            }
            out.push((number, fields));
        }
        Ok(out)
    }

    fn read_masses(&mut self, parser: &mut Parser) -> Result<()> {
        for (number, fields) in Self::section_lines(parser, self.types, &[2], "Masses")? {
            let t = self.type_index(parser, number, fields[0])?;
            let [mass] = parser.numbers::<1>(number, &fields[1..], "mass")?;
            MASS_RANGE
                .check(mass)
                .map_err(|reason| parser.error(number, format!("mass of type {} {reason}", t + 1)))?;
            self.masses[t] = Some(mass);
        }
        Ok(())
    }

    fn check_style(parser: &Parser, number: usize, section: &str) -> Result<()> {
        match parser.comment_of(number) {
            Some(style) if !style.is_empty() && !style.starts_with("lj/cut") => {
                Err(parser.error(number, format!("{section} are for pair style '{style}'; only lj/cut is supported")))
            }
            _ => Ok(()),
        }
    }

    fn read_type_coeffs(&mut self, parser: &mut Parser, header: usize) -> Result<()> {
        Self::check_style(parser, header, "Pair Coeffs")?;
        for (number, fields) in Self::section_lines(parser, self.types, &[3, 4], "Pair Coeffs")? {
            let t = self.type_index(parser, number, fields[0])?;
            let coefficients = read_coefficients(parser, number, &fields[1..])?;
            self.type_coeffs[t] = Some(coefficients);
        }
        Ok(())
    }

    fn read_pair_coeffs(&mut self, parser: &mut Parser) -> Result<()> {
        let count = self.types * (self.types + 1) / 2;
        for (number, fields) in Self::section_lines(parser, count, &[4, 5], "PairIJ Coeffs")? {
            let a = self.type_index(parser, number, fields[0])?;
            let b = self.type_index(parser, number, fields[1])?;
            let coefficients = read_coefficients(parser, number, &fields[2..])?;
            self.pair_coeffs.insert((a.min(b), a.max(b)), coefficients);
        }
        Ok(())
    }

    fn read_atoms(&mut self, parser: &mut Parser, header: usize, atoms: usize) -> Result<()> {
        match parser.comment_of(header) {
            Some(style) if !style.is_empty() && style != "atomic" => {
                return Err(parser.error(header, format!("atom style '{style}' is not supported; use atomic")));
            }
            _ => {}
        }
        let lines = Self::section_lines(parser, atoms, &[5, 8], "Atoms")?;
        self.ids.reserve(atoms);
        let mut seen = std::collections::HashSet::with_capacity(atoms);
        for (number, fields) in lines {
            let id = parse_index(fields[0])
                .filter(|&id| id > 0)
                .ok_or_else(|| parser.error(number, format!("atom id '{}' is not a positive integer", fields[0])))?;
            if !seen.insert(id) {
                return Err(parser.error(number, format!("atom id {id} appears twice")));
            }
            let t = self.type_index(parser, number, fields[1])?;
            let mut position = parser.numbers::<3>(number, &fields[2..5], "coordinate")?;
            if fields.len() == 8 {
                for d in 0..3 {
                    let image: i64 = fields[5 + d].parse().map_err(|_| {
                        parser.error(number, format!("image flag '{}' is not an integer", fields[5 + d]))
                    })?;
                    position[d] += image as f64 * (self.box_high[d] - self.box_low[d]);
                }
            }
            self.ids.push(id);
            self.atom_types.push(t as u32);
            self.positions.push(position);
        }
        Ok(())
    }

    fn read_velocities(&mut self, parser: &mut Parser, atoms: usize) -> Result<()> {
        for (number, fields) in Self::section_lines(parser, atoms, &[4], "Velocities")? {
            let id = parse_index(fields[0])
                .ok_or_else(|| parser.error(number, format!("atom id '{}' is not a positive integer", fields[0])))?;
            let velocity = parser.numbers::<3>(number, &fields[1..], "velocity")?;
            if self.velocities.insert(id, velocity).is_some() {
                return Err(parser.error(number, format!("velocity of atom {id} is given twice")));
            }
        }
        Ok(())
    }

    /// The coefficients of a pair of types, from `PairIJ Coeffs` or mixed from `Pair Coeffs`.
    fn coeff(&self, a: usize, b: usize, settings: &Settings) -> Option<PairCoeff> {
        let (epsilon, sigma, cutoff) = match self.pair_coeffs.get(&(a.min(b), a.max(b))) {
            Some(&c) => c,
            None => {
                let (ea, sa, ca) = self.type_coeffs[a]?;
                let (eb, sb, cb) = self.type_coeffs[b]?;
                let cutoff = match (ca, cb) {
                    (Some(x), Some(y)) => Some((x * y).sqrt()),
                    _ => None,
                };
                ((ea * eb).sqrt(), (sa * sb).sqrt(), cutoff)
            }
        };
        Some(PairCoeff { epsilon, sigma, cutoff: cutoff.unwrap_or(settings.cutoff) })
    }

    /// Completes the file into a system with the script-level settings.
    pub fn to_system(&self, path: &str, settings: &Settings) -> Result<PhysicalSystem> {
        let fail = |message: String| KernelError::DataFile { path: path.to_string(), line: 1, message };
        let mut masses = Vec::with_capacity(self.types);
        for (t, mass) in self.masses.iter().enumerate() {
            masses.push(mass.ok_or_else(|| fail(format!("no mass for atom type {} (Masses section)", t + 1)))?);
        }
        let mut pair_coeffs = Vec::with_capacity(self.types * self.types);
        for a in 0..self.types {
            for b in 0..self.types {
                pair_coeffs.push(self.coeff(a, b, settings).ok_or_else(|| {
                    fail(format!("no lj/cut coefficients for types {} {} (Pair Coeffs or PairIJ Coeffs)", a + 1, b + 1))
                })?);
            }
        }
        let velocities = self.ids.iter().map(|id| self.velocities.get(id).copied().unwrap_or([0.0; 3])).collect();
        let known: std::collections::HashSet<u64> = self.ids.iter().copied().collect();
        if let Some(id) = self.velocities.keys().find(|id| !known.contains(id)) {
            return Err(fail(format!("Velocities names atom {id}, which is not in Atoms")));
        }
        Ok(PhysicalSystem {
            params: Params {
                box_origin: self.box_low,
                box_length: std::array::from_fn(|d| self.box_high[d] - self.box_low[d]),
                masses,
                pair_coeffs,
                shift: settings.shift,
                timestep: settings.timestep,
                langevin: None,
            },
            step: self.timestep_number,
            ids: self.ids.clone(),
            types: self.atom_types.clone(),
            positions: self.positions.clone(),
            velocities,
        })
    }
}

/// Writes a system as a LAMMPS data file (atomic), so LAMMPS can run the same atoms.
pub fn write(path: &Path, state: &crate::system::State) -> Result<()> {
    use std::fmt::Write as _;
    let p = &state.params;
    let mut out = String::new();
    let _ = writeln!(out, "LAMMPS data file written by upglobe, timestep = {}\n", state.step);
    let _ = writeln!(out, "{} atoms\n{} atom types\n", state.atoms(), p.types());
    for d in 0..3 {
        let axis = ['x', 'y', 'z'][d];
        let _ = writeln!(out, "{:.17e} {:.17e} {axis}lo {axis}hi", p.box_origin[d], p.box_origin[d] + p.box_length[d]);
    }
    let _ = writeln!(out, "\nMasses\n");
    for (t, m) in p.masses.iter().enumerate() {
        let _ = writeln!(out, "{} {m:.17e}", t + 1);
    }
    let _ = writeln!(out, "\nPairIJ Coeffs # lj/cut\n");
    for a in 0..p.types() {
        for b in a..p.types() {
            let c = p.pair(a, b);
            let _ = writeln!(out, "{} {} {:.17e} {:.17e} {:.17e}", a + 1, b + 1, c.epsilon, c.sigma, c.cutoff);
        }
    }
    let _ = writeln!(out, "\nAtoms # atomic\n");
    for i in 0..state.atoms() {
        let x = state.position(i);
        let _ =
            writeln!(out, "{} {} {:.17e} {:.17e} {:.17e} 0 0 0", state.ids[i], state.types[i] + 1, x[0], x[1], x[2]);
    }
    let _ = writeln!(out, "\nVelocities\n");
    for i in 0..state.atoms() {
        let v = state.velocity(i);
        let _ = writeln!(out, "{} {:.17e} {:.17e} {:.17e}", state.ids[i], v[0], v[1], v[2]);
    }
    std::fs::write(path, out).map_err(|source| KernelError::Io { path: path.display().to_string(), cause: source })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = "LAMMPS data file via write_data, version 29 Sep 2021, timestep = 0

4 atoms
1 atom types

0 10 xlo xhi
0 10 ylo yhi
0 10 zlo zhi

Masses

1 1

Pair Coeffs # lj/cut/opt

1 1 1

Atoms # atomic

1 1 0 0 0 0 0 0
2 1 1.1 0 0 0 0 0
3 1 0 1.1 0 0 0 0
4 1 0 0 1.1 0 0 -1

Velocities

1 0.1 0 0
2 0 0.2 0
3 0 0 0.3
4 -0.1 -0.2 -0.3
";

    fn settings() -> Settings {
        Settings { cutoff: 2.5, shift: false, timestep: 0.005 }
    }

    #[test]
    fn reads_write_data_output() {
        let data = DataFile::parse("small.data", SMALL).unwrap();
        assert_eq!(data.ids.len(), 4);
        assert_eq!(data.positions[3], [0.0, 0.0, 1.1 - 10.0]);
        let system = data.to_system("small.data", &settings()).unwrap();
        assert_eq!(system.params.pair_coeffs[0], PairCoeff { epsilon: 1.0, sigma: 1.0, cutoff: 2.5 });
        assert_eq!(system.velocities[2], [0.0, 0.0, 0.3]);
    }

    fn error_of(text: &str) -> String {
        match DataFile::parse("bad.data", text).and_then(|d| d.to_system("bad.data", &settings())) {
            Ok(_) => panic!("accepted a bad file"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn reports_file_and_line() {
        assert_eq!(
            error_of(&SMALL.replace("2 1 1.1 0 0", "2 1 1.x 0 0")),
            "bad.data:21: coordinate: '1.x' is not a finite number"
        );
        assert_eq!(
            error_of(&SMALL.replace("3 1 0 1.1", "3 7 0 1.1")),
            "bad.data:22: atom type '7' is not between 1 and 1"
        );
        assert_eq!(
            error_of(&SMALL.replace("3 1 0 1.1 0 0 0 0", "2 1 0 1.1 0 0 0 0")),
            "bad.data:22: atom id 2 appears twice"
        );
        assert_eq!(
            error_of(&SMALL.replace("Atoms # atomic", "Atoms # full")),
            "bad.data:18: atom style 'full' is not supported; use atomic"
        );
        assert_eq!(
            error_of(&SMALL.replace("1 atom types", "1 atom types\n2 bonds")),
            "bad.data:5: 'bonds' is not supported: only atomic systems are"
        );
        assert_eq!(
            error_of(&SMALL.replace("Velocities", "Bonds")),
            "bad.data:25: section 'Bonds' is not supported: only atomic systems with lj/cut are"
        );
        assert_eq!(
            error_of(&SMALL.replace("4 -0.1 -0.2 -0.3\n", "")),
            "bad.data:29: section 'Velocities' ends after 3 lines; 4 were expected"
        );
        assert_eq!(
            error_of(&SMALL.replace("1 1 1\n", "1 1\n")),
            "bad.data:16: Pair Coeffs line has 2 columns; expected 3 or 4"
        );
        assert_eq!(
            error_of(&SMALL.replace("Pair Coeffs # lj/cut/opt", "Pair Coeffs # morse")),
            "bad.data:14: Pair Coeffs are for pair style 'morse'; only lj/cut is supported"
        );
        let no_coeffs = SMALL.replace("Pair Coeffs # lj/cut/opt\n\n1 1 1\n", "");
        assert_eq!(
            error_of(&no_coeffs),
            "bad.data:1: no lj/cut coefficients for types 1 1 (Pair Coeffs or PairIJ Coeffs)"
        );
        assert_eq!(
            error_of(&SMALL.replace("0 10 xlo xhi", "0 10 0 xy xz yz")),
            "bad.data:6: triclinic boxes are not supported"
        );
    }

    #[test]
    fn mixes_unlike_pairs_geometrically() {
        let text = SMALL
            .replace("1 atom types", "2 atom types")
            .replace("Masses\n\n1 1\n", "Masses\n\n1 1\n2 4\n")
            .replace("1 1 1\n", "1 1 1\n2 4 2 3.0\n");
        let system = DataFile::parse("mix.data", &text).unwrap().to_system("mix.data", &settings()).unwrap();
        let mixed = system.params.pair_coeffs[1];
        assert_eq!(mixed.epsilon, 2.0);
        assert_eq!(mixed.sigma, 2f64.sqrt());
        assert_eq!(mixed.cutoff, 2.5, "one type without its own cutoff: the global one applies");
        assert_eq!(system.params.pair_coeffs[3].cutoff, 3.0);
    }
}
