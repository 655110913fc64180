//! Admin rules: rhai scripts that decide which records qualify (notifiers)
//! and how rows match (imports). This module owns the one place that builds
//! the rhai engine and its sandbox.
//!
//! A rule is an expression over the record's fields (dashes in field names
//! become underscores: `first_name`) and the task's `params`, and returns
//! true or false. Every rule is compiled when it is loaded, so a broken one
//! is refused with its file and line before any run uses it.

use std::cell::Cell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rhai::{AST, Dynamic, Engine, EvalAltResult, Map, Position, Scope};

use crate::records::{Record, ValueRef};

/// Errors from loading or evaluating rules. Each names the rule's file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The rule does not compile.
    #[error("rule {file} line {line}, column {column}: {message}")]
    Compile {
        /// The rule's file.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser said.
        message: String,
    },
    /// The rule failed while running on a record.
    #[error("rule {file} line {line}, column {column} failed: {message}")]
    Runtime {
        /// The rule's file.
        file: String,
        /// 1-based line (0 when unknown).
        line: usize,
        /// 1-based column (0 when unknown).
        column: usize,
        /// What went wrong.
        message: String,
    },
    /// The rule hit a sandbox limit.
    #[error("rule {file} stopped: {limit}. Simplify the rule, or raise the limit in the config")]
    Limit {
        /// The rule's file.
        file: String,
        /// Which limit.
        limit: String,
    },
    /// The rule returned something other than true or false.
    #[error("rule {file} must return true or false, but returned {found}")]
    NotBool {
        /// The rule's file.
        file: String,
        /// The type it returned.
        found: String,
    },
    /// A match rule returned something other than a list of keys.
    #[error(
        "rule {file} must return its match keys, a list of field lists such as [[\"student-id\"], [\"ssn\"]], but returned {found}"
    )]
    NotKeys {
        /// The rule's file.
        file: String,
        /// What it returned.
        found: String,
    },
    /// No rule has that name.
    #[error("no rule named `{name}`: add {dir}/{name}.rhai, or save it with `schoolbell rule save {name} FILE`", dir = dir.display())]
    Unknown {
        /// The name asked for.
        name: String,
        /// The rules folder.
        dir: PathBuf,
    },
    /// The rules folder or a rule file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A rule cannot be written into the rules folder.
    #[error("cannot save {}: {source}; the rule was not saved", path.display())]
    Save {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A rule's name cannot be a file name.
    #[error("rule name `{0}`: use letters, digits, `_` and `-`")]
    BadName(String),
}

/// The sandbox's limits for one rule evaluation.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RuleLimits {
    /// The most rhai operations one evaluation may take.
    pub max_operations: u64,
    /// The longest string a rule may build, in bytes.
    pub max_string_size: usize,
    /// The largest array a rule may build.
    pub max_array_size: usize,
    /// The largest object map a rule may build.
    pub max_map_size: usize,
    /// The deepest function-call nesting.
    pub max_call_levels: usize,
    /// Wall-clock time for one evaluation, in milliseconds.
    pub timeout_ms: u64,
    /// The most sample rows one rule test (`rule test`, the workbench) takes.
    pub test_max_rows: usize,
    /// Wall-clock time for one rule test over all its rows, in milliseconds.
    pub test_max_ms: u64,
}

impl Default for RuleLimits {
    fn default() -> Self {
        RuleLimits {
            max_operations: 100_000,
            max_string_size: 64 * 1024,
            max_array_size: 10_000,
            max_map_size: 10_000,
            max_call_levels: 32,
            timeout_ms: 1_000,
            test_max_rows: 10_000,
            test_max_ms: 5_000,
        }
    }
}

thread_local! {
    /// The deadline of the evaluation running on this thread. The engine is
    /// shared, so the deadline cannot live in its `on_progress` closure.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// What rules print on this thread while a rule test collects it.
    static PRINTED: std::cell::RefCell<Option<Printed>> = const { std::cell::RefCell::new(None) };
}

/// The most lines, and bytes, of `print` one rule test keeps.
const PRINTED_LINES: usize = 200;
const PRINTED_BYTES: usize = 16 * 1024;

/// What a rule printed during a test, capped.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Printed {
    /// The lines kept, in order, SSN-shaped text masked.
    pub lines: Vec<String>,
    /// Lines past the cap, counted.
    pub dropped: u64,
    #[serde(skip)]
    bytes: usize,
}

impl Printed {
    fn push(&mut self, text: &str) {
        if self.lines.len() >= PRINTED_LINES || self.bytes + text.len() > PRINTED_BYTES {
            self.dropped += 1;
            return;
        }
        self.bytes += text.len();
        self.lines.push(text.to_string());
    }
}

/// Runs `f`, collecting what rules print on this thread meanwhile instead
/// of logging it: a rule test's prints are its author's, not the service's.
pub fn collecting_prints<T>(f: impl FnOnce() -> T) -> (T, Printed) {
    PRINTED.with(|p| *p.borrow_mut() = Some(Printed::default()));
    let out = f();
    (out, PRINTED.with(|p| p.borrow_mut().take()).unwrap_or_default())
}

/// Builds the rules engine: the only place a rhai `Engine` is made.
///
/// `new_raw` plus the standard package (no modules, no file or network
/// access exist in it), every size and depth limit, and a wall-clock
/// deadline checked through `on_progress`.
pub fn engine(limits: &RuleLimits) -> Engine {
    use rhai::packages::{Package, StandardPackage};
    #[allow(clippy::disallowed_methods)] // This is the one place.
    let mut engine = Engine::new_raw();
    engine.register_global_module(StandardPackage::new().as_shared_module());
    engine
        .set_max_operations(limits.max_operations)
        .set_max_string_size(limits.max_string_size)
        .set_max_array_size(limits.max_array_size)
        .set_max_map_size(limits.max_map_size)
        .set_max_call_levels(limits.max_call_levels)
        .set_max_expr_depths(64, 32)
        .set_max_variables(256)
        .set_max_functions(64);
    engine.on_progress(|ops| {
        if ops % 512 == 0
            && let Some(deadline) = DEADLINE.get()
            && Instant::now() > deadline
        {
            return Some(Dynamic::from("time limit"));
        }
        None
    });
    // Names compared as people mean them: `fold("García") == fold("GARCIA")`.
    engine.register_fn("fold", |text: &str| crate::records::fold(text));
    // A match key field compared folded: `[folded("last-name"), "birth-date"]`.
    engine.register_fn("folded", |field: &str| format!("{}{field}", crate::records::FOLDED));
    // What a rule prints can be a record's field: SSN-shaped text is masked.
    engine.on_print(|text| {
        let text = crate::privacy::mask_ssns(text);
        let collected = PRINTED.with(|p| p.borrow_mut().as_mut().map(|p| p.push(&text)).is_some());
        if !collected {
            tracing::info!(target: "schoolbell::rules", "{text}");
        }
    });
    engine.on_debug(|text, source, pos| {
        tracing::debug!(target: "schoolbell::rules", ?source, %pos, "{}", crate::privacy::mask_ssns(text))
    });
    engine
}

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    /// The rule's name (its file name without `.rhai`).
    pub name: String,
    /// The file it came from, for messages.
    pub file: String,
    /// SHA-256 of its source: a stored import plan notes it, and its commit
    /// is refused if the rule changed since.
    pub hash: String,
    ast: AST,
    /// Its source, compiled again for each thread that runs it (see
    /// [`Selector::pass`]).
    source: String,
    /// Names the rule mentions, to explain decisions.
    mentions: Vec<String>,
    /// The variables it may read (see [`words`]).
    roots: std::collections::HashSet<String>,
    /// Its first condition, when that compares a field for equality.
    first_equality: Option<(String, Operand)>,
}

/// What a rule's first condition compares a field with.
#[derive(Debug, Clone, PartialEq)]
enum Operand {
    /// A text constant: `campus == "North"`.
    Text(String),
    /// A parameter: `campus == params.campus`.
    Param(String),
}

/// The rule's first condition, when the rule is one expression whose first
/// `&&` operand (or the whole of it) is `field == "text"` or
/// `field == params.name`, either way round. A record whose field differs
/// cannot qualify, so an index on the field may pick the candidates.
fn first_equality(ast: &AST) -> Option<(String, Operand)> {
    use rhai::{Expr, Stmt};
    // A lone comparison is a call statement; anything else an expression.
    let call = match ast.statements() {
        [Stmt::FnCall(call, _)] => call,
        [Stmt::Expr(expr)] => match expr.as_ref() {
            Expr::And(operands, _) => match operands.first()? {
                Expr::FnCall(call, _) => call,
                _ => return None,
            },
            Expr::FnCall(call, _) => call,
            _ => return None,
        },
        _ => return None,
    };
    let [left, right] = call.args.as_slice() else {
        return None;
    };
    if call.name != "==" || call.op_token.is_none() {
        return None;
    }
    let field = |e: &Expr| match e {
        Expr::Variable(name, ..) if name.1 != "params" && name.1 != "record" => Some(name.1.to_string()),
        _ => None,
    };
    let operand = |e: &Expr| match e {
        Expr::StringConstant(text, _) => Some(Operand::Text(text.to_string())),
        Expr::Dot(dot, ..) => match (&dot.lhs, &dot.rhs) {
            (Expr::Variable(root, ..), Expr::Property(property, _)) if root.1 == "params" => {
                Some(Operand::Param(property.2.to_string()))
            }
            _ => None,
        },
        _ => None,
    };
    field(left).zip(operand(right)).or_else(|| field(right).zip(operand(left)))
}

impl Rule {
    /// Whether it may read the variable `name`: it names it somewhere, or
    /// it calls `eval`, which may name anything.
    fn reads(&self, name: &str) -> bool {
        self.roots.contains(name) || self.roots.contains("eval")
    }

    /// What a listing shows of it.
    pub fn info(&self) -> RuleInfo {
        RuleInfo { name: self.name.clone(), file: self.file.clone(), hash: self.hash.clone() }
    }
}

/// One saved version of a rule, as the store keeps it. Every save adds
/// one, so a rule's history says who changed it and when; where hosts
/// share a database, the newest versions there are the rules every host
/// runs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RuleVersion {
    /// The rule's name.
    pub name: String,
    /// 1 for its first save, then one more each time.
    pub version: u64,
    /// SHA-256 of the source.
    pub hash: String,
    /// Who saved it (the rules folder, for rules seeded from it).
    pub saved_by: String,
    /// When.
    pub saved_at: chrono::DateTime<chrono::Utc>,
    /// The rule's text.
    pub source: String,
}

impl RuleVersion {
    /// How messages name this version.
    pub fn shown(&self) -> String {
        format!("{}.rhai (version {})", self.name, self.version)
    }
}

/// A rule's verdict on one record.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Whether the record qualifies.
    pub matched: bool,
    /// The values that decided, such as `absences=7, params.threshold=5`.
    pub reason: String,
}

/// The loaded rules, compiled, with the engine that runs them.
///
/// Besides yes/no rules, a match rule returns its match keys (see
/// [`RuleSet::match_keys`]).
pub struct RuleSet {
    engine: Arc<Engine>,
    limits: RuleLimits,
    dir: PathBuf,
    /// Behind a lock so a rule saved while the service runs takes effect
    /// at once; a run holds its own `Arc<Rule>` and keeps the version it
    /// first used.
    rules: RwLock<HashMap<String, Arc<Rule>>>,
}

/// A loaded rule, as listed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RuleInfo {
    /// The rule's name.
    pub name: String,
    /// Its file.
    pub file: String,
    /// SHA-256 of its source.
    pub hash: String,
}

impl RuleSet {
    /// The limits its rules run under.
    pub fn limits(&self) -> &RuleLimits {
        &self.limits
    }

    /// An empty set whose rules would live in `dir`.
    pub fn new(dir: &Path, limits: RuleLimits) -> RuleSet {
        RuleSet {
            engine: Arc::new(engine(&limits)),
            limits,
            dir: dir.to_path_buf(),
            rules: RwLock::new(HashMap::new()),
        }
    }

    /// Compiles every `*.rhai` file in `dir`. Returns every broken rule's
    /// error, not just the first.
    pub fn load_dir(dir: &Path, limits: RuleLimits) -> Result<RuleSet, Vec<Error>> {
        let set = RuleSet::new(dir, limits);
        if !dir.exists() {
            return Ok(set);
        }
        let entries = std::fs::read_dir(dir).map_err(|source| vec![Error::Io { path: dir.into(), source }])?;
        let mut errors = Vec::new();
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths.into_iter().filter(|p| p.extension().is_some_and(|e| e == "rhai")) {
            match set.compile_file(&path) {
                Ok(rule) => {
                    set.insert(rule);
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() { Ok(set) } else { Err(errors) }
    }

    /// The folder the rules are read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the folder again, into a new set with the same limits.
    pub fn read_dir_again(&self) -> Result<RuleSet, Vec<Error>> {
        RuleSet::load_dir(&self.dir, self.limits.clone())
    }

    /// Reads the folder again and makes its rules the ones runs use from
    /// now on (a run under way keeps the versions it holds). All or none:
    /// when a rule does not compile, the loaded rules stay as they were and
    /// every error is returned. Returns how many rules are loaded.
    pub fn reload(&self) -> Result<usize, Vec<Error>> {
        let fresh = self.read_dir_again()?;
        let rules = std::mem::take(&mut *fresh.rules.write().unwrap_or_else(|e| e.into_inner()));
        let count = rules.len();
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = rules;
        Ok(count)
    }

    /// Makes `versions` the rules runs use from now on, in place of every
    /// rule loaded. All or none, like [`RuleSet::reload`]. Returns how many
    /// rules are loaded.
    pub fn load_versions(&self, versions: &[RuleVersion]) -> Result<usize, Vec<Error>> {
        let mut rules = HashMap::new();
        let mut errors = Vec::new();
        for v in versions {
            match self.compile(&v.name, &v.shown(), &v.source) {
                Ok(rule) => {
                    rules.insert(v.name.clone(), Arc::new(rule));
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let count = rules.len();
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = rules;
        Ok(count)
    }

    /// The loaded rules' names and sources, by name.
    pub fn sources(&self) -> Vec<(String, String)> {
        let rules = self.rules.read().unwrap_or_else(|e| e.into_inner());
        let mut sources: Vec<(String, String)> = rules.values().map(|r| (r.name.clone(), r.source.clone())).collect();
        sources.sort();
        sources
    }

    /// Compiles one rule file.
    pub fn compile_file(&self, path: &Path) -> Result<Rule, Error> {
        let source = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.into(), source })?;
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        self.compile(&name, &path.display().to_string(), &source)
    }

    /// Compiles a rule from source; `file` names it in messages.
    pub fn compile(&self, name: &str, file: &str, source: &str) -> Result<Rule, Error> {
        let ast = self.engine.compile(source).map_err(|e| {
            let (line, column) = position(e.position());
            Error::Compile { file: file.into(), line, column, message: e.err_type().to_string() }
        })?;
        use sha2::Digest;
        let hash = hex::encode(sha2::Sha256::digest(source.as_bytes()));
        let mentions = mentions(source);
        let roots = words(source);
        let first_equality = first_equality(&ast);
        Ok(Rule {
            name: name.into(),
            file: file.into(),
            hash,
            ast,
            source: source.into(),
            mentions,
            roots,
            first_equality,
        })
    }

    /// Makes a compiled rule the one runs use from now on.
    pub fn insert(&self, rule: Rule) -> Arc<Rule> {
        let rule = Arc::new(rule);
        // A panic elsewhere cannot leave the map half-written: insert is one step.
        self.rules.write().unwrap_or_else(|e| e.into_inner()).insert(rule.name.clone(), rule.clone());
        rule
    }

    /// The rule named `name`.
    pub fn get(&self, name: &str) -> Result<Arc<Rule>, Error> {
        let rules = self.rules.read().unwrap_or_else(|e| e.into_inner());
        rules.get(name).cloned().ok_or_else(|| Error::Unknown { name: name.into(), dir: self.dir.clone() })
    }

    /// The names of the loaded rules.
    pub fn names(&self) -> Vec<String> {
        self.list().into_iter().map(|r| r.name).collect()
    }

    /// The loaded rules, by name.
    pub fn list(&self) -> Vec<RuleInfo> {
        let rules = self.rules.read().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<RuleInfo> = rules.values().map(|r| r.info()).collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// The rule named `name` and its source, as loaded.
    pub fn source(&self, name: &str) -> Result<(RuleInfo, String), Error> {
        let rule = self.get(name)?;
        Ok((rule.info(), rule.source.clone()))
    }

    /// Compiles `source` as the rule `name`, to be saved. Refused when the
    /// name is not a plain file name or the rule does not compile (the
    /// error names `from`, where the source came from).
    pub fn prepare(&self, name: &str, from: &str, source: &str) -> Result<Rule, Error> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(Error::BadName(name.into()));
        }
        self.compile(name, from, source).map_err(|e| match e {
            Error::Compile { file, line, column, message } => {
                Error::Compile { file, line, column, message: format!("{message}; the rule was not saved") }
            }
            other => other,
        })
    }

    /// Saves `source` as the rule `name` (the file `NAME.rhai` in the rules
    /// folder) and makes it the one runs use from now on. Refused, with
    /// nothing written, when the name is not a plain file name or the rule
    /// does not compile (the error names `from`, where the source came
    /// from). The file is replaced by a rename, so a reader sees the old
    /// rule or the new one, never half of it.
    pub fn save(&self, name: &str, from: &str, source: &str) -> Result<Arc<Rule>, Error> {
        let mut rule = self.prepare(name, from, source)?;
        let target = self.dir.join(format!("{name}.rhai"));
        rule.file = target.display().to_string();
        let staged = self.dir.join(format!(".{name}.rhai.saving"));
        fn save(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
            move |source| Error::Save { path: path.to_path_buf(), source }
        }
        std::fs::create_dir_all(&self.dir).map_err(save(&self.dir))?;
        std::fs::write(&staged, source).map_err(save(&staged))?;
        std::fs::rename(&staged, &target).map_err(save(&target))?;
        Ok(self.insert(rule))
    }

    /// Evaluates `rule` on `record` with the task's `params`, explaining
    /// the decision whichever way it went. To decide many records, bind the
    /// rule once with [`RuleSet::selector`].
    pub fn eval(&self, rule: &Arc<Rule>, record: &Record, params: &Record) -> Result<Decision, Error> {
        let selector = self.selector(rule.clone(), params);
        selector.decide(&mut selector.pass(), &crate::records::fields(record), true)
    }

    /// Binds `rule` to one run's `params`: the parameters are converted
    /// once, and each record then costs only the fields the rule names.
    pub fn selector(&self, rule: Arc<Rule>, params: &Record) -> Selector {
        let params = params.iter().map(|(k, v)| (k.replace('-', "_").into(), dynamic(v.as_ref()))).collect();
        let wants_record = rule.reads("record");
        Selector {
            engine: self.engine.clone(),
            timeout: Duration::from_millis(self.limits.timeout_ms),
            rule,
            params,
            wants_record,
            idle: Default::default(),
            counted: true,
        }
    }
}

/// A rule bound to one run's parameters (see [`RuleSet::selector`]).
///
/// Each record is handed to rhai as variables for only the fields the rule
/// names, in a scope that is rewound and reused rather than built anew,
/// and the `record` map is built only for rules that use it. Decisions are
/// the same as evaluating the rule with every field in scope.
pub struct Selector {
    engine: Arc<Engine>,
    timeout: Duration,
    rule: Arc<Rule>,
    /// The parameters, as the rule sees them (`params.threshold`).
    params: Map,
    /// Whether the rule mentions `record`, the map of every field.
    wants_record: bool,
    /// Passes no thread is using, kept for the next chunk of records.
    idle: std::sync::Mutex<Vec<Pass>>,
    /// Whether its passes count in the metrics: a test's do not, so a
    /// draft's name never becomes a label.
    counted: bool,
}

/// A [`Pass`] lent to one thread, returned to its selector when dropped.
pub struct Lent<'s> {
    selector: &'s Selector,
    pass: Option<Pass>,
}

impl std::ops::Deref for Lent<'_> {
    type Target = Pass;
    fn deref(&self) -> &Pass {
        self.pass.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for Lent<'_> {
    fn deref_mut(&mut self) -> &mut Pass {
        self.pass.as_mut().expect("held until dropped")
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(pass) = self.pass.take() {
            self.selector.idle.lock().unwrap_or_else(|e| e.into_inner()).push(pass);
        }
    }
}

/// One thread's reusable state for a [`Selector`]: the scope holding the
/// parameters, and which of the collection's field names the rule wants
/// (records of one collection mostly share their fields, so this is
/// worked out once per name, not per record).
pub struct Pass {
    ast: AST,
    scope: Scope<'static>,
    base: usize,
    fields: Vec<(String, Option<rhai::Identifier>)>,
    /// The rule's name and what this pass decided, for the metrics: added
    /// up here and counted once when the pass is dropped, not per record.
    rule: String,
    evaluated: u64,
    failed: u64,
    counted: bool,
}

impl Drop for Pass {
    fn drop(&mut self) {
        if self.counted {
            crate::metrics::rule_used(&self.rule, self.evaluated, self.failed);
        }
    }
}

impl Selector {
    /// The same selector, kept out of the metrics (a rule test).
    pub fn uncounted(mut self) -> Selector {
        self.counted = false;
        self
    }

    /// A fresh per-thread state.
    ///
    /// The thread gets its own copy of the compiled rule and of the
    /// parameters: rhai shares a script's constants and functions by
    /// reference count, and two cores bumping one count per record spend
    /// more time passing its cache line back and forth than evaluating.
    pub fn pass(&self) -> Pass {
        // It compiled once, so it compiles again; the shared copy is the fallback.
        let ast = self.engine.compile(&self.rule.source).unwrap_or_else(|_| self.rule.ast.clone());
        let params: Map = self.params.iter().map(|(k, v)| (k.clone(), deep_copy(v))).collect();
        let mut scope = Scope::new();
        scope.push_constant("params", params);
        let base = scope.len();
        Pass {
            ast,
            scope,
            base,
            fields: Vec::new(),
            rule: self.rule.name.clone(),
            evaluated: 0,
            failed: 0,
            counted: self.counted,
        }
    }

    /// A pass for one thread, reused from an earlier chunk when one is idle:
    /// a pass costs a compile.
    pub fn lend(&self) -> Lent<'_> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        Lent { selector: self, pass: Some(idle.unwrap_or_else(|| self.pass())) }
    }

    /// Decides one record. The reason is worked out for a match, and for
    /// a miss only when `explain_misses` (the workbench shows both).
    pub fn decide(
        &self,
        pass: &mut Pass,
        record: &[(&str, ValueRef)],
        explain_misses: bool,
    ) -> Result<Decision, Error> {
        pass.evaluated += 1;
        let decision = self.decide_in(pass, record, explain_misses);
        pass.failed += u64::from(decision.is_err());
        decision
    }

    fn decide_in(&self, pass: &mut Pass, record: &[(&str, ValueRef)], explain_misses: bool) -> Result<Decision, Error> {
        let Pass { ast, scope, base, fields, .. } = pass;
        scope.rewind(*base);
        for (i, (name, value)) in record.iter().enumerate() {
            if fields.get(i).is_none_or(|(known, _)| known != name) {
                let var = self.variable(name);
                match fields.get_mut(i) {
                    Some(slot) => *slot = (name.to_string(), var),
                    None => fields.push((name.to_string(), var)),
                }
            }
            if let Some(var) = &fields[i].1 {
                scope.push_dynamic(var.clone(), dynamic(*value));
            }
        }
        if self.wants_record {
            let map: Map = record.iter().map(|(k, v)| (k.replace('-', "_").into(), dynamic(*v))).collect();
            scope.push_constant("record", map);
        }
        DEADLINE.set(Some(Instant::now() + self.timeout));
        let result = self.engine.eval_ast_with_scope::<Dynamic>(scope, ast);
        DEADLINE.set(None);
        let value = result.map_err(|e| runtime_error(&self.rule.file, *e))?;
        let matched =
            value.as_bool().map_err(|found| Error::NotBool { file: self.rule.file.clone(), found: found.into() })?;
        let reason = if matched || explain_misses { self.explain(scope) } else { String::new() };
        Ok(Decision { matched, reason })
    }

    /// The records among `records` that qualify, with their reasons, in
    /// order, decided across every core. The first failure fails them all,
    /// as a rule that breaks on one record breaks its run.
    pub fn select<'r>(&self, records: &'r [Record]) -> Result<Vec<(&'r Record, String)>, Error> {
        use rayon::prelude::*;
        records
            .par_iter()
            .with_min_len(4096)
            .map_init(
                || self.lend(),
                |pass, record| {
                    let decision = self.decide(pass, &crate::records::fields(record), false)?;
                    Ok(decision.matched.then_some((record, decision.reason)))
                },
            )
            .filter_map(|r: Result<Option<(&Record, String)>, Error>| r.transpose())
            .collect()
    }

    /// The field and text a record must equal to qualify, when the rule's
    /// first condition says so (`campus == "North"`, or
    /// `campus == params.campus` with a text parameter). The field is named
    /// as the rule names it (underscores for dashes). None when the rule
    /// says nothing that simple, or the text is blank (records with a blank
    /// field have no index entry).
    pub fn required_equal(&self) -> Option<(&str, String)> {
        let (field, operand) = self.rule.first_equality.as_ref()?;
        let text = match operand {
            Operand::Text(text) => text.clone(),
            Operand::Param(name) => self.params.get(name.as_str())?.read_lock::<rhai::ImmutableString>()?.to_string(),
        };
        (!text.trim().is_empty()).then_some((field.as_str(), text))
    }

    /// The scope variable for a record field, if the rule names it: dashes
    /// become underscores, and `params` and `record` cannot be shadowed.
    fn variable(&self, field: &str) -> Option<rhai::Identifier> {
        let name = field.replace('-', "_");
        (name != "params" && name != "record" && self.rule.reads(&name)).then(|| name.into())
    }

    fn explain(&self, scope: &Scope) -> String {
        let mut parts = Vec::new();
        for name in &self.rule.mentions {
            let value = match name.split_once('.') {
                Some(("params", field)) => self.params.get(field).cloned(),
                Some(("record", field)) => {
                    scope.get("record").and_then(|r| r.read_lock::<Map>().and_then(|m| m.get(field).cloned()))
                }
                Some(_) => None,
                None => scope.get_value::<Dynamic>(name).filter(|v| !v.is_map()),
            };
            let Some(value) = value else {
                continue;
            };
            // An empty text parameter is an unset filter: it decided nothing.
            if name.contains('.') && value.is_string() && value.to_string().is_empty() {
                continue;
            }
            let shown = if value.is_string() { format!("{:?}", value.to_string()) } else { value.to_string() };
            parts.push(format!("{name}={shown}"));
        }
        parts.join(", ")
    }
}

impl RuleSet {
    /// Evaluates a match rule: it returns its match keys in priority order,
    /// each a list of field names, such as
    /// `[["student-id"], ["ssn"], ["last-name", "first-name", "birth-date"]]`.
    pub fn match_keys(&self, rule: &Rule) -> Result<Vec<Vec<String>>, Error> {
        let shape = |found: &str| Error::NotKeys { file: rule.file.clone(), found: found.to_string() };
        let mut scope = Scope::new();
        DEADLINE.set(Some(Instant::now() + Duration::from_millis(self.limits.timeout_ms)));
        let result = self.engine.eval_ast_with_scope::<Dynamic>(&mut scope, &rule.ast);
        DEADLINE.set(None);
        let value = result.map_err(|e| runtime_error(&rule.file, *e))?;
        let outer = value.into_array().map_err(shape)?;
        let mut keys = Vec::new();
        for key in outer {
            let fields = key.into_array().map_err(shape)?;
            let mut names = Vec::new();
            for f in fields {
                names.push(f.into_string().map_err(shape)?);
            }
            if names.is_empty() {
                return Err(shape("an empty key"));
            }
            keys.push(names);
        }
        if keys.is_empty() {
            return Err(shape("no keys"));
        }
        Ok(keys)
    }
}

fn position(pos: Position) -> (usize, usize) {
    (pos.line().unwrap_or(0), pos.position().unwrap_or(0))
}

fn runtime_error(file: &str, e: EvalAltResult) -> Error {
    let limit = match &e {
        EvalAltResult::ErrorTooManyOperations(_) => Some("it used more operations than allowed".to_string()),
        EvalAltResult::ErrorTerminated(..) => Some("it ran past its time limit".to_string()),
        EvalAltResult::ErrorStackOverflow(_) => Some("its calls nested too deeply".to_string()),
        EvalAltResult::ErrorDataTooLarge(what, _) => Some(format!("{what} grew larger than allowed")),
        EvalAltResult::ErrorTooManyVariables(_) => Some("it declared too many variables".to_string()),
        _ => None,
    };
    if let Some(limit) = limit {
        return Error::Limit { file: file.into(), limit };
    }
    let (line, column) = position(e.position());
    Error::Runtime { file: file.into(), line, column, message: e.unwrap_inner().to_string() }
}

/// A copy of a parameter that shares no reference count with the original.
fn deep_copy(v: &Dynamic) -> Dynamic {
    match v.read_lock::<rhai::ImmutableString>() {
        Some(text) => rhai::ImmutableString::from(text.as_str()).into(),
        None => v.clone(),
    }
}

fn dynamic(v: ValueRef) -> Dynamic {
    match v {
        ValueRef::Null => Dynamic::UNIT,
        ValueRef::Bool(b) => b.into(),
        ValueRef::Int(n) => n.into(),
        ValueRef::Float(x) => x.into(),
        ValueRef::Text(s) => rhai::ImmutableString::from(s).into(),
        // ISO dates compare correctly as text.
        ValueRef::Date(d) => d.to_string().into(),
    }
}

/// Every identifier-like word anywhere in a rule, strings and comments
/// included: the variables it may read, over-counted rather than missed,
/// since an interpolated `${campus}` or `eval("campus == ...")` reads
/// `campus` too.
fn words(source: &str) -> std::collections::HashSet<String> {
    source.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|w| !w.is_empty()).map(String::from).collect()
}

/// The identifiers a rule mentions (`absences`, `params.threshold`),
/// outside strings and comments, in order of first mention.
fn mentions(source: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let chars: Vec<char> = source.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '"' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '.') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let word = word.trim_end_matches('.').to_string();
            if !out.contains(&word) {
                out.push(word);
            }
        } else {
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Value;

    fn set() -> RuleSet {
        RuleSet::new(Path::new("rules"), RuleLimits::default())
    }

    fn rec(pairs: &[(&str, Value)]) -> Record {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn a_rule_decides_and_explains_with_the_values_it_read() {
        let s = set();
        let rule = Arc::new(s.compile("t", "t.rhai", "absences >= params.threshold && campus == \"North\"").unwrap());
        let d = s
            .eval(
                &rule,
                &rec(&[("absences", Value::Int(7)), ("campus", Value::Text("North".into()))]),
                &rec(&[("threshold", Value::Int(5))]),
            )
            .unwrap();
        assert!(d.matched);
        assert_eq!(d.reason, "absences=7, params.threshold=5, campus=\"North\"");
    }

    #[test]
    fn a_first_equality_with_a_constant_or_a_text_parameter_can_narrow() {
        let s = set();
        let required = |source: &str, params: &[(&str, Value)]| {
            let rule = Arc::new(s.compile("t", "t.rhai", source).unwrap());
            s.selector(rule, &rec(params)).required_equal().map(|(f, t)| (f.to_string(), t))
        };
        let north = Some(("campus".to_string(), "North".to_string()));
        assert_eq!(required("campus == \"North\" && absences > 3", &[]), north);
        assert_eq!(required("\"North\" == campus", &[]), north);
        let param = [("campus", Value::Text("North".into()))];
        assert_eq!(required("campus == params.campus && absences > 3", &param), north);
        assert_eq!(required("campus == params.campus", &[("campus", Value::Text(" ".into()))]), None, "blank");
        assert_eq!(required("campus == params.campus", &[("campus", Value::Int(3))]), None, "not text");
        assert_eq!(required("absences > 3 && campus == \"North\"", &[]), None, "not first");
        assert_eq!(required("campus == \"North\" || absences > 3", &[]), None, "an or");
        assert_eq!(required("let x = 1; campus == \"North\"", &[]), None, "more than one statement");
        assert_eq!(required("params == \"North\"", &[]), None);
    }

    #[test]
    fn a_rule_reads_fields_it_names_only_in_an_interpolation_or_an_eval() {
        let s = set();
        let record = rec(&[("campus", Value::Text("North".into())), ("first-name", Value::Text("Ann".into()))]);
        for source in
            ["let c = `${campus}`; c == \"North\"", "eval(\"campus == `North`\")", "`${record.first_name}` == \"Ann\""]
        {
            let rule = Arc::new(s.compile("t", "t.rhai", source).unwrap());
            assert!(s.eval(&rule, &record, &Record::new()).unwrap().matched, "{source}");
        }
    }

    #[test]
    fn a_syntax_error_names_the_file_line_and_column() {
        let err = set().compile("t", "rules/t.rhai", "let x = 1;\nx >= ").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("rule rules/t.rhai line 2, column"), "{msg}");
    }

    #[test]
    fn an_endless_loop_stops_at_the_operation_limit() {
        let s = set();
        let rule = Arc::new(s.compile("t", "t.rhai", "loop { }").unwrap());
        let err = s.eval(&rule, &Record::new(), &Record::new()).unwrap_err();
        assert!(matches!(err, Error::Limit { .. }), "{err}");
    }

    #[test]
    fn a_huge_string_stops_at_the_size_limit() {
        let s = set();
        let rule = Arc::new(s.compile("t", "t.rhai", "let s = \"x\"; loop { s += s; }").unwrap());
        let err = s.eval(&rule, &Record::new(), &Record::new()).unwrap_err();
        assert!(matches!(err, Error::Limit { .. }), "{err}");
    }

    #[test]
    fn deep_recursion_stops_at_the_call_limit() {
        let s = set();
        let rule = Arc::new(s.compile("t", "t.rhai", "fn f(n) { f(n + 1) } f(0)").unwrap());
        let err = s.eval(&rule, &Record::new(), &Record::new()).unwrap_err();
        assert!(matches!(err, Error::Limit { .. }), "{err}");
    }

    #[test]
    fn a_rule_that_returns_a_number_is_an_error() {
        let s = set();
        let rule = Arc::new(s.compile("t", "t.rhai", "41 + 1").unwrap());
        let err = s.eval(&rule, &Record::new(), &Record::new()).unwrap_err();
        assert_eq!(err.to_string(), "rule t.rhai must return true or false, but returned i64");
    }
}
