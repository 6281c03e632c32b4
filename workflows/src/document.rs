//! The TOML document as a small tree in which every key, value and table knows its byte offset.
//!
//! toml_edit distinguishes header tables, dotted-key tables and inline tables; the checker only cares
//! about "a table with entries" and "where is it", so the tree flattens those cases. An array of tables
//! (`[[jobs.a.verify.compare]]`) keeps its tables, each at its own `[[header]]`.

use toml_edit::{Item, Value as TomlValue};

/// A value and the byte offset where it starts.
#[derive(Debug, Clone)]
pub(crate) struct Spanned {
    pub(crate) value: Value,
    pub(crate) at: usize,
}

#[derive(Debug, Clone)]
pub(crate) enum Value {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    Datetime,
    Array(Vec<Spanned>),
    Table(Table),
    ArrayOfTables(Vec<Table>),
}

#[derive(Debug, Clone)]
pub(crate) struct Table {
    /// Where the table is introduced: its `[header]`, or its key for inline and dotted tables.
    pub(crate) at: usize,
    pub(crate) entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) key_at: usize,
    pub(crate) value: Spanned,
}

impl Value {
    /// The type as a person would name it, with an article: "found a string".
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Boolean(_) => "a boolean",
            Value::Datetime => "a date-time",
            Value::Array(_) => "an array",
            Value::Table(_) => "a table",
            Value::ArrayOfTables(_) => "an array of tables",
        }
    }
}

impl Table {
    pub(crate) fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|entry| entry.key == key)
    }
}

/// Parses TOML text; a syntax error comes back as its message and byte offset.
pub(crate) fn parse(source: &str) -> Result<Table, (String, usize)> {
    let document = toml_edit::Document::parse(source).map_err(|error| {
        let at = error.span().map_or(0, |span| span.start);
        (error.message().trim().to_string(), at)
    })?;
    Ok(convert_table(document.as_table(), 0))
}

/// `fallback` is where the parent saw this table's key, for tables whose own span is unknown.
fn convert_table(table: &toml_edit::Table, fallback: usize) -> Table {
    let entries = table
        .iter()
        .filter_map(|(key, _)| table.get_key_value(key))
        .filter_map(|(key, item)| {
            let key_at = key.span().map_or(fallback, |span| span.start);
            let value = convert_item(item, key_at)?;
            Some(Entry { key: key.get().to_string(), key_at, value })
        })
        .collect();
    Table { at: table.span().map_or(fallback, |span| span.start), entries }
}

fn convert_item(item: &Item, key_at: usize) -> Option<Spanned> {
    match item {
        Item::None => None,
        Item::Value(value) => Some(convert_value(value, key_at)),
        Item::Table(table) => {
            let table = convert_table(table, key_at);
            Some(Spanned { at: table.at, value: Value::Table(table) })
        }
        Item::ArrayOfTables(array) => {
            let at = array.span().map_or(key_at, |span| span.start);
            let tables = array.iter().map(|table| convert_table(table, at)).collect();
            Some(Spanned { at, value: Value::ArrayOfTables(tables) })
        }
    }
}

fn convert_value(value: &TomlValue, fallback: usize) -> Spanned {
    let at = value.span().map_or(fallback, |span| span.start);
    let value = match value {
        TomlValue::String(text) => Value::String(text.value().clone()),
        TomlValue::Integer(number) => Value::Integer(*number.value()),
        TomlValue::Float(number) => Value::Float(*number.value()),
        TomlValue::Boolean(flag) => Value::Boolean(*flag.value()),
        TomlValue::Datetime(_) => Value::Datetime,
        TomlValue::Array(array) => Value::Array(array.iter().map(|element| convert_value(element, at)).collect()),
        TomlValue::InlineTable(inline) => Value::Table(convert_inline_table(inline, at)),
    };
    Spanned { value, at }
}

fn convert_inline_table(table: &toml_edit::InlineTable, at: usize) -> Table {
    let entries = table
        .iter()
        .filter_map(|(key, _)| table.get_key_value(key))
        .filter_map(|(key, item)| {
            let key_at = key.span().map_or(at, |span| span.start);
            let value = convert_item(item, key_at)?;
            Some(Entry { key: key.get().to_string(), key_at, value })
        })
        .collect();
    Table { at, entries }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offset_of(source: &str, needle: &str) -> usize {
        source.find(needle).unwrap()
    }

    #[test]
    fn every_table_and_value_knows_where_it_starts() {
        let source = "name = \"w\"\n[jobs.a]\nkind = \"md\"\nrun.steps = 10\nsystem = { cells = [1, 2] }\n[jobs.a.potential]\ncutoff = 2.5\n";
        let root = parse(source).unwrap();
        assert_eq!(root.get("name").unwrap().value.at, offset_of(source, "\"w\""));
        let Value::Table(jobs) = &root.get("jobs").unwrap().value.value else { panic!("jobs is not a table") };
        assert_eq!(jobs.at, offset_of(source, "jobs.a"), "an implicit table is where its key first appears");
        let Value::Table(job) = &jobs.get("a").unwrap().value.value else { panic!("job is not a table") };
        assert_eq!(job.at, offset_of(source, "[jobs.a]"));
        let keys: Vec<&str> = job.entries.iter().map(|entry| entry.key.as_str()).collect();
        assert_eq!(keys, ["kind", "run", "system", "potential"]);
        let Value::Table(run) = &job.get("run").unwrap().value.value else { panic!("run is not a table") };
        assert_eq!(run.at, offset_of(source, "run.steps"), "a dotted table is at its key");
        assert_eq!(run.get("steps").unwrap().key_at, offset_of(source, "steps"));
        let Value::Table(system) = &job.get("system").unwrap().value.value else { panic!("system is not a table") };
        assert_eq!(system.at, offset_of(source, "{ cells"));
        let Value::Array(cells) = &system.get("cells").unwrap().value.value else { panic!("cells is not an array") };
        assert_eq!(cells[1].at, offset_of(source, "2]"));
        let Value::Table(potential) = &job.get("potential").unwrap().value.value else { panic!("no potential") };
        assert_eq!(potential.at, offset_of(source, "[jobs.a.potential]"));
    }

    #[test]
    fn each_table_of_an_array_of_tables_is_at_its_header() {
        let source = "[jobs.a.verify]\npolicy = \"tolerance\"\n[[jobs.a.verify.compare]]\nfile = \"x\"\n\
                      [[jobs.a.verify.compare]]\nfile = \"y\"\n";
        let root = parse(source).unwrap();
        let Value::Table(jobs) = &root.get("jobs").unwrap().value.value else { panic!("jobs is not a table") };
        let Value::Table(job) = &jobs.get("a").unwrap().value.value else { panic!("job is not a table") };
        let Value::Table(verify) = &job.get("verify").unwrap().value.value else { panic!("verify is not a table") };
        let compare = verify.get("compare").unwrap();
        assert_eq!(compare.key_at, offset_of(source, "compare]]"));
        let Value::ArrayOfTables(tables) = &compare.value.value else { panic!("compare is not an array of tables") };
        assert_eq!(tables.len(), 2);
        assert_eq!(tables[0].at, offset_of(source, "[[jobs.a.verify.compare]]"));
        assert_eq!(tables[1].at, source.rfind("[[jobs.a.verify.compare]]").unwrap());
        let file = tables[1].get("file").unwrap();
        assert_eq!((file.key_at, file.value.at), (offset_of(source, "file = \"y\""), offset_of(source, "\"y\"")));
    }

    #[test]
    fn syntax_errors_carry_their_offset() {
        let (message, at) = parse("a = 1\nb = \"open\n").unwrap_err();
        assert_eq!(message, "invalid basic string, expected `\"`");
        assert_eq!(at, 15, "where the closing quote is missing");
    }
}
