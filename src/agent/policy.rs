//! The directive policy: uploaded configurations are code.
//!
//! haproxy and stunnel can read any file they can open and run programs (`lua-load`,
//! `program` sections, `external-check`, `http-request return ... file`, `errorfile`,
//! `crt` / `ca-file` paths, ACL pattern files, map files; stunnel `exec`, `output`,
//! `CAfile`, ...). Before an uploaded configuration reaches `haproxy -c` or stunnel, it
//! passes this policy, which by default lets it name files only inside its own instance's
//! directories (its state directory with the certificates and the custom 503, and its
//! run directory) and refuses everything that loads code, runs programs, changes the
//! daemon's user or root, changes or reads the environment, or inherits descriptors.
//!
//! The check works on the text after placeholder expansion, line by line (so a refusal
//! names the line of the upload), tokenised as haproxy tokenises it (quotes, backslash
//! and `\xHH` escapes, comments). Paths are judged after normalisation: `..` and `//`
//! lexically, and symlinks through the file system (a `Resolver`), so a link pointing
//! out of the instance does not get a file in. Relative paths are refused unless a
//! `crt-base` / `ca-base` / `key-base` / `server-state-base` that is itself allowed makes
//! them absolute (haproxy would otherwise resolve them against its working directory).
//!
//! An operator who trusts its controller can allow named directives (accepted whatever
//! their arguments) or path prefixes (`[instances.policy]`). The daemons run without the
//! agent's privileges whatever is allowed: this policy is the first fence, not the last.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// The name under which environment-variable expansion (`$VAR`, `${VAR}`) and the `env()`
/// sample fetch can be allowed.
pub const ENVIRONMENT: &str = "environment";

/// haproxy keywords refused by default, with why. `user` and `group` are fine inside a
/// `userlist` section, where they name HTTP users.
const HAPROXY_FORBIDDEN: &[(&str, &str)] = &[
    ("chroot", "changes the daemon's root"),
    ("user", "changes the daemon's user"),
    ("group", "changes the daemon's group"),
    ("uid", "changes the daemon's user"),
    ("gid", "changes the daemon's group"),
    ("setcap", "keeps capabilities"),
    ("insecure-fork-wanted", "lets the daemon run programs"),
    ("insecure-setuid-wanted", "lets the daemon change user"),
    ("external-check", "runs programs"),
    ("lua-load", "loads code"),
    ("lua-load-per-thread", "loads code"),
    ("lua-prepend-path", "loads code"),
    ("setenv", "changes the environment"),
    ("presetenv", "changes the environment"),
    ("resetenv", "changes the environment"),
    ("unsetenv", "changes the environment"),
    (".setenv", "changes the environment"),
    (".unsetenv", "changes the environment"),
    ("ssl-engine", "loads code (an OpenSSL engine)"),
    ("ssl-provider", "loads code (an OpenSSL provider)"),
    ("ssl-provider-path", "loads code (an OpenSSL provider)"),
    ("set-dumpable", "writes core dumps"),
    ("module-path", "loads code"),
    ("module-load", "loads code"),
];

/// haproxy sections refused by default.
const HAPROXY_FORBIDDEN_SECTIONS: &[(&str, &str)] = &[("program", "runs programs")];

/// Every haproxy section keyword: a line starting with one opens a section.
const HAPROXY_SECTIONS: &[&str] = &[
    "global",
    "defaults",
    "frontend",
    "backend",
    "listen",
    "userlist",
    "peers",
    "resolvers",
    "mailers",
    "program",
    "http-errors",
    "ring",
    "cache",
    "fcgi-app",
    "log-forward",
    "crt-store",
    "traces",
];

/// haproxy keywords whose first argument is a file or directory. The base, if any, is
/// what makes a relative argument absolute.
const HAPROXY_PATH_KEYWORDS: &[(&str, Base)] = &[
    ("pidfile", Base::None),
    ("ca-base", Base::None),
    ("crt-base", Base::None),
    ("key-base", Base::None),
    ("issuers-chain-path", Base::None),
    ("ssl-dh-param-file", Base::None),
    ("server-state-base", Base::None),
    ("server-state-file", Base::State),
    ("h1-case-adjust-file", Base::None),
    ("wurfl-data-file", Base::None),
    ("51degrees-data-file", Base::None),
    ("deviceatlas-json-file", Base::None),
    ("httpclient.ssl.ca-file", Base::Ca),
    ("backing-file", Base::None),
];

/// Options of `bind`, `server`, `default-server`, `peer`, `stats socket` and crt-store
/// `load` lines whose argument is a file.
const HAPROXY_FILE_OPTIONS: &[(&str, Base)] = &[
    ("crt", Base::Crt),
    ("crt-list", Base::Crt),
    ("key", Base::Key),
    ("ca-file", Base::Ca),
    ("ca-verify-file", Base::Ca),
    ("crl-file", Base::Ca),
    ("ca-sign-file", Base::Ca),
    ("ocsp", Base::Crt),
    ("issuer", Base::Crt),
    ("sctl", Base::Crt),
];

/// Rule keywords whose `file`, `lf-file` and `errorfile` arguments name files.
const HAPROXY_RULES: &[&str] = &[
    "http-request",
    "http-response",
    "http-after-response",
    "http-error",
    "tcp-request",
    "tcp-response",
];

/// Sample converters and actions whose first argument is a file (map and ACL files).
const HAPROXY_FILE_FUNCTIONS: &[&str] = &["set-map", "del-map", "add-acl", "del-acl", "clear-map"];

/// stunnel options refused by default, with why.
const STUNNEL_FORBIDDEN: &[(&str, &str)] = &[
    ("exec", "runs programs"),
    ("execargs", "runs programs"),
    ("pty", "runs programs"),
    ("chroot", "changes the daemon's root"),
    ("setuid", "changes the daemon's user"),
    ("setgid", "changes the daemon's group"),
    ("include", "reads configuration that is not checked"),
    ("engine", "loads code (an OpenSSL engine)"),
    ("enginectrl", "loads code (an OpenSSL engine)"),
    ("enginedefault", "loads code (an OpenSSL engine)"),
    ("engineid", "loads code (an OpenSSL engine)"),
    ("enginenum", "loads code (an OpenSSL engine)"),
    ("provider", "loads code (an OpenSSL provider)"),
    ("providerparameter", "loads code (an OpenSSL provider)"),
];

/// stunnel options whose value is a file or directory.
const STUNNEL_PATHS: &[&str] = &[
    "cert",
    "key",
    "cafile",
    "capath",
    "crlfile",
    "crlpath",
    "output",
    "rndfile",
    "egd",
    "psksecrets",
];

/// stunnel options whose value is an address, a path when it starts with `/`.
const STUNNEL_ADDRESSES: &[&str] = &["accept", "connect", "local", "redirect"];

/// Every name `allow_directives` may hold.
pub fn known_directives() -> BTreeSet<&'static str> {
    let mut names: BTreeSet<&str> = HAPROXY_FORBIDDEN.iter().map(|(k, _)| *k).collect();
    names.extend(HAPROXY_FORBIDDEN_SECTIONS.iter().map(|(k, _)| *k));
    names.extend(HAPROXY_PATH_KEYWORDS.iter().map(|(k, _)| *k));
    names.extend(HAPROXY_RULES.iter().copied());
    names.extend(HAPROXY_FILE_FUNCTIONS.iter().copied());
    names.extend(STUNNEL_FORBIDDEN.iter().map(|(k, _)| *k));
    names.extend(STUNNEL_PATHS.iter().copied());
    names.extend(STUNNEL_ADDRESSES.iter().copied());
    names.extend([
        ENVIRONMENT,
        "errorfile",
        "bind",
        "server",
        "default-server",
        "server-template",
        "peer",
        "nameserver",
        "mailer",
        "dgram-bind",
        "log",
        "stats",
        "filter",
        "load",
        "unix-bind",
        "default-path",
        "acl",
        "map",
        "fd",
    ]);
    names
}

/// One refused line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// 1-based line of the uploaded configuration.
    pub line: usize,
    /// The directive as written (`lua-load`, `bind crt`, `http-request file`, ...).
    pub directive: String,
    /// Why it is refused.
    pub reason: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}: {}", self.line, self.directive, self.reason)
    }
}

/// How a path is made absolute and its symlinks followed.
pub trait Resolver {
    fn resolve(&self, path: &Path) -> PathBuf;
}

/// The file system: symlinks followed as the kernel would.
pub struct FileSystem;

impl Resolver for FileSystem {
    fn resolve(&self, path: &Path) -> PathBuf {
        resolve(path)
    }
}

/// Lexical normalisation only (no file system): for tests and fuzzing.
pub struct Lexical;

impl Resolver for Lexical {
    fn resolve(&self, path: &Path) -> PathBuf {
        normalize(path)
    }
}

/// The policy: what an operator allows beyond the instance's own directories.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    allow_directives: BTreeSet<String>,
    allow_paths: Vec<PathBuf>,
}

/// Where one instance's configuration may name files.
pub struct Scope<'a> {
    /// The instance's directories, resolved.
    pub roots: Vec<PathBuf>,
    pub resolver: &'a dyn Resolver,
}

impl<'a> Scope<'a> {
    /// The scope of an instance whose directories are `dirs`.
    pub fn new(dirs: &[&Path], resolver: &'a dyn Resolver) -> Scope<'a> {
        Scope {
            roots: dirs.iter().map(|d| resolver.resolve(d)).collect(),
            resolver,
        }
    }
}

/// What makes a relative path absolute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    None,
    Crt,
    Ca,
    Key,
    State,
}

/// The bases set in the global section, as written (already judged when set).
#[derive(Default)]
struct Bases {
    crt: Option<Vec<u8>>,
    ca: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
    state: Option<Vec<u8>>,
    unix_prefix: Option<Vec<u8>>,
}

impl Bases {
    fn get(&self, base: Base) -> Option<&[u8]> {
        match base {
            Base::None => None,
            Base::Crt => self.crt.as_deref(),
            Base::Ca => self.ca.as_deref(),
            Base::Key => self.key.as_deref(),
            Base::State => self.state.as_deref(),
        }
    }
}

/// A line's findings before they get their line number.
type Findings = Vec<(String, String)>;

impl Policy {
    /// A policy allowing these directives (case-insensitive for stunnel) and path prefixes.
    pub fn new(allow_directives: &[String], allow_paths: &[PathBuf]) -> Policy {
        Policy {
            allow_directives: allow_directives.iter().map(|d| d.to_lowercase()).collect(),
            allow_paths: allow_paths.iter().map(|p| resolve(p)).collect(),
        }
    }

    fn allows(&self, directive: &str) -> bool {
        self.allow_directives.contains(&directive.to_lowercase())
    }

    fn path_ok(&self, scope: &Scope<'_>, path: &Path) -> bool {
        let resolved = scope.resolver.resolve(path);
        scope
            .roots
            .iter()
            .chain(&self.allow_paths)
            .any(|r| resolved.starts_with(r))
    }

    /// Judges a file argument: `Err(reason)` when it may not be named.
    fn judge_path(&self, scope: &Scope<'_>, raw: &[u8], base: Option<&[u8]>) -> Result<(), String> {
        let shown = String::from_utf8_lossy(raw);
        if raw.is_empty() {
            return Err("empty path".into());
        }
        let path = Path::new(OsStr::from_bytes(raw));
        let absolute = if path.is_absolute() {
            path.to_path_buf()
        } else if let Some(base) = base {
            Path::new(OsStr::from_bytes(base)).join(path)
        } else {
            return Err(format!(
                "relative path {shown:?}: name files by absolute path inside this instance's directories (e.g. {{CERTS}}/name.pem)"
            ));
        };
        if self.path_ok(scope, &absolute) {
            Ok(())
        } else {
            Err(format!("{shown} is outside this instance's directories"))
        }
    }

    /// Checks an haproxy configuration (placeholders already expanded).
    pub fn check_haproxy(&self, text: &str, scope: &Scope<'_>) -> Result<(), Vec<Violation>> {
        let mut violations = Vec::new();
        let mut section = String::new();
        let mut bases = Bases::default();
        for (index, line) in text.lines().enumerate() {
            let findings = match haproxy_words(line) {
                Ok(words) => self.haproxy_line(&words, &mut section, &mut bases, scope),
                Err(Expansion) if self.allows(ENVIRONMENT) => Vec::new(),
                Err(Expansion) => vec![(
                    first_word(line),
                    "environment variables are not expanded in uploaded configurations".into(),
                )],
            };
            violations.extend(findings.into_iter().map(|(directive, reason)| Violation {
                line: index + 1,
                directive,
                reason,
            }));
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(violations)
        }
    }

    fn haproxy_line(
        &self,
        words: &[Vec<u8>],
        section: &mut String,
        bases: &mut Bases,
        scope: &Scope<'_>,
    ) -> Findings {
        let mut out = Findings::new();
        let Some(first) = words.first() else {
            return out;
        };
        let kw = String::from_utf8_lossy(first).into_owned();
        let arg = |i: usize| words.get(i).map(Vec::as_slice);
        if HAPROXY_SECTIONS.contains(&kw.as_str()) {
            *section = kw.clone();
            if let Some((_, why)) = HAPROXY_FORBIDDEN_SECTIONS.iter().find(|(s, _)| *s == kw)
                && !self.allows(&kw)
            {
                out.push((format!("{kw} section"), (*why).to_string()));
            }
            return out;
        }
        if self.allows(&kw) {
            return out;
        }
        let in_userlist = section == "userlist";
        if let Some((_, why)) = HAPROXY_FORBIDDEN.iter().find(|(k, _)| *k == kw)
            && !(in_userlist && (kw == "user" || kw == "group"))
        {
            out.push((kw.clone(), (*why).to_string()));
            return out;
        }
        if kw == "option" && arg(1) == Some(b"external-check") {
            if !self.allows("external-check") {
                out.push(("option external-check".into(), "runs programs".into()));
            }
            return out;
        }
        if let Some((_, base)) = HAPROXY_PATH_KEYWORDS.iter().find(|(k, _)| *k == kw) {
            self.path(&mut out, scope, &kw, arg(1), bases.get(*base));
            if out.is_empty() {
                let value = arg(1).map(<[u8]>::to_vec);
                match kw.as_str() {
                    "crt-base" => bases.crt = value,
                    "ca-base" => bases.ca = value,
                    "key-base" => bases.key = value,
                    "server-state-base" => bases.state = value,
                    _ => {}
                }
            }
        }
        match kw.as_str() {
            "unix-bind" => {
                if let Some(i) = words.iter().position(|w| w == b"prefix") {
                    self.path(&mut out, scope, "unix-bind prefix", arg(i + 1), None);
                    if out.is_empty() {
                        bases.unix_prefix = arg(i + 1).map(<[u8]>::to_vec);
                    }
                }
            }
            "default-path" if arg(1) == Some(b"origin") => {
                self.path(&mut out, scope, "default-path origin", arg(2), None);
            }
            "stats" if arg(1) == Some(b"socket") => {
                self.address(&mut out, scope, "stats socket", arg(2), None, false);
                self.file_options(
                    &mut out,
                    scope,
                    "stats socket",
                    &words[2.min(words.len())..],
                    bases,
                );
            }
            "log" if arg(1) != Some(b"global") => {
                self.address(&mut out, scope, "log", arg(1), None, true);
            }
            "bind" => {
                for addr in arg(1).unwrap_or_default().split(|b| *b == b',') {
                    let prefix = bases.unix_prefix.clone();
                    self.address(
                        &mut out,
                        scope,
                        "bind",
                        Some(addr),
                        prefix.as_deref(),
                        false,
                    );
                }
                self.file_options(&mut out, scope, "bind", &words[1.min(words.len())..], bases);
            }
            "dgram-bind" => self.address(&mut out, scope, "dgram-bind", arg(1), None, false),
            "server" | "peer" => {
                self.address(&mut out, scope, &kw, arg(2), None, false);
                self.file_options(&mut out, scope, &kw, &words[2.min(words.len())..], bases);
            }
            "nameserver" | "mailer" => self.address(&mut out, scope, &kw, arg(2), None, false),
            "default-server" | "server-template" | "load" => {
                self.file_options(&mut out, scope, &kw, &words[1..], bases);
            }
            "errorfile" => self.path(&mut out, scope, "errorfile", arg(2), None),
            "filter" => {
                if let Some(i) = words.iter().position(|w| w == b"config") {
                    self.path(&mut out, scope, "filter config", arg(i + 1), None);
                }
            }
            _ => {}
        }
        if HAPROXY_RULES.contains(&kw.as_str()) {
            for (i, w) in words.iter().enumerate() {
                if matches!(w.as_slice(), b"file" | b"lf-file" | b"errorfile") {
                    let directive = format!("{kw} {}", String::from_utf8_lossy(w));
                    self.path(&mut out, scope, &directive, arg(i + 1), None);
                }
            }
        }
        // Anywhere: ACL pattern files, map files, the environment.
        for (i, w) in words.iter().enumerate() {
            if w == b"-f" && !self.allows("acl") {
                self.path(&mut out, scope, &format!("{kw} -f"), arg(i + 1), None);
            }
            for (function, argument) in functions(w) {
                if function == b"env" {
                    if !self.allows(ENVIRONMENT) {
                        out.push(("env()".into(), "reads the daemon's environment".into()));
                    }
                } else if is_file_function(function) {
                    let name = String::from_utf8_lossy(function);
                    let directive = format!("{name}()");
                    if !self.allows("map") && !self.allows(&name) {
                        self.path(&mut out, scope, &directive, Some(unquote(argument)), None);
                    }
                }
            }
        }
        out
    }

    /// Judges one file argument of `directive`, unless that directive is allowed.
    fn path(
        &self,
        out: &mut Findings,
        scope: &Scope<'_>,
        directive: &str,
        raw: Option<&[u8]>,
        base: Option<&[u8]>,
    ) {
        let Some(raw) = raw else { return };
        if self.allows(directive) {
            return;
        }
        if let Err(why) = self.judge_path(scope, raw, base) {
            out.push((directive.to_string(), why));
        }
    }

    /// Judges the file options of a `bind`, `server`, ... line.
    fn file_options(
        &self,
        out: &mut Findings,
        scope: &Scope<'_>,
        kw: &str,
        options: &[Vec<u8>],
        bases: &Bases,
    ) {
        for (i, w) in options.iter().enumerate() {
            let Some((name, base)) = HAPROXY_FILE_OPTIONS.iter().find(|(o, _)| o.as_bytes() == w)
            else {
                continue;
            };
            let directive = format!("{kw} {name}");
            if self.allows(&directive) {
                continue;
            }
            if let Some(raw) = options.get(i + 1)
                && let Err(why) = self.judge_path(scope, raw, bases.get(*base))
            {
                out.push((directive, why));
            }
        }
    }

    /// Judges an address: network addresses pass; UNIX socket paths must be allowed;
    /// inherited descriptors are refused (a log may write to its own stdout/stderr).
    fn address(
        &self,
        out: &mut Findings,
        scope: &Scope<'_>,
        directive: &str,
        raw: Option<&[u8]>,
        unix_prefix: Option<&[u8]>,
        log: bool,
    ) {
        let Some(raw) = raw else { return };
        if self.allows(directive) {
            return;
        }
        let path = ["unix@", "uxst@", "uxdg@"]
            .iter()
            .find_map(|p| raw.strip_prefix(p.as_bytes()))
            .or_else(|| raw.starts_with(b"/").then_some(raw));
        if let Some(path) = path {
            let full = match unix_prefix {
                Some(prefix) => [prefix, path].concat(),
                None => path.to_vec(),
            };
            if let Err(why) = self.judge_path(scope, &full, None) {
                out.push((directive.to_string(), why));
            }
        } else if (raw.starts_with(b"fd@") || raw.starts_with(b"sockpair@"))
            && !(log && matches!(raw, b"fd@1" | b"fd@2"))
            && !self.allows("fd")
        {
            out.push((
                directive.to_string(),
                format!(
                    "{} uses a descriptor inherited from the agent",
                    String::from_utf8_lossy(raw)
                ),
            ));
        }
    }

    /// Checks an stunnel configuration (placeholders already expanded).
    pub fn check_stunnel(&self, text: &str, scope: &Scope<'_>) -> Result<(), Vec<Violation>> {
        let mut violations = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty()
                || line.starts_with(';')
                || line.starts_with('#')
                || line.starts_with('[')
            {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            let lower = key.to_lowercase();
            if self.allows(&lower) {
                continue;
            }
            let mut refuse = |reason: String| {
                violations.push(Violation {
                    line: index + 1,
                    directive: key.to_string(),
                    reason,
                })
            };
            if let Some((_, why)) = STUNNEL_FORBIDDEN.iter().find(|(k, _)| *k == lower) {
                refuse((*why).to_string());
            } else if (STUNNEL_PATHS.contains(&lower.as_str())
                || (STUNNEL_ADDRESSES.contains(&lower.as_str()) && value.starts_with('/')))
                && let Err(why) = self.judge_path(scope, value.as_bytes(), None)
            {
                refuse(why);
            }
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(violations)
        }
    }
}

/// A `$VAR` or `${VAR}` haproxy would expand.
#[derive(Debug)]
struct Expansion;

/// Splits a line into words as haproxy does: blanks separate words, `#` starts a comment,
/// single quotes take everything literally, double quotes allow escapes, `\` escapes the
/// next character (`\xHH` is a byte, `\r`, `\n`, `\t` control characters).
fn haproxy_words(line: &str) -> Result<Vec<Vec<u8>>, Expansion> {
    let b = line.as_bytes();
    let mut words = Vec::new();
    let mut word = Vec::new();
    let mut in_word = false;
    let mut quote = 0u8;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if quote == b'\'' {
            if c == b'\'' {
                quote = 0;
            } else {
                word.push(c);
            }
            i += 1;
            continue;
        }
        match c {
            b'\'' | b'"' if quote == 0 => {
                quote = c;
                in_word = true;
            }
            b'"' => quote = 0,
            b'\\' => {
                in_word = true;
                let hex = |at: usize| b.get(at).and_then(|h| (*h as char).to_digit(16));
                match b.get(i + 1) {
                    Some(b'x') if hex(i + 2).is_some() && hex(i + 3).is_some() => {
                        let (hi, lo) = (hex(i + 2).unwrap_or(0), hex(i + 3).unwrap_or(0));
                        word.push((hi * 16 + lo) as u8);
                        i += 4;
                        continue;
                    }
                    Some(b'r') => word.push(b'\r'),
                    Some(b'n') => word.push(b'\n'),
                    Some(b't') => word.push(b'\t'),
                    Some(other) => word.push(*other),
                    None => word.push(b'\\'),
                }
                i += 2;
                continue;
            }
            b'$' => {
                let next = b.get(i + 1);
                if next.is_some_and(|n| *n == b'{' || *n == b'_' || n.is_ascii_alphabetic()) {
                    return Err(Expansion);
                }
                word.push(c);
                in_word = true;
            }
            b'#' if quote == 0 => break,
            // haproxy splits words at C's isspace(): vertical tab, form feed and a bare
            // carriage return separate words as a space does.
            b' ' | b'\t' | b'\x0b' | b'\x0c' | b'\r' if quote == 0 => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            _ => {
                word.push(c);
                in_word = true;
            }
        }
        i += 1;
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

fn first_word(line: &str) -> String {
    line.split_whitespace().next().unwrap_or("").to_string()
}

/// The function calls in a word (`name(first argument`), e.g. `map(/f,x)` in
/// `%[req.hdr(host),map(/f,x)]`: each name with its first argument.
fn functions(word: &[u8]) -> Vec<(&[u8], &[u8])> {
    let ident = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.');
    let mut found = Vec::new();
    for (open, _) in word.iter().enumerate().filter(|(_, c)| **c == b'(') {
        let start = word[..open]
            .iter()
            .rposition(|c| !ident(*c))
            .map_or(0, |p| p + 1);
        let rest = &word[open + 1..];
        let end = rest
            .iter()
            .position(|c| matches!(c, b',' | b')'))
            .unwrap_or(rest.len());
        found.push((&word[start..open], &rest[..end]));
    }
    found
}

fn is_file_function(name: &[u8]) -> bool {
    name == b"map"
        || name.starts_with(b"map_")
        || HAPROXY_FILE_FUNCTIONS.iter().any(|f| f.as_bytes() == name)
}

fn unquote(arg: &[u8]) -> &[u8] {
    let arg = arg.trim_ascii();
    for q in [b'\'', b'"'] {
        if arg.len() >= 2 && arg[0] == q && arg[arg.len() - 1] == q {
            return &arg[1..arg.len() - 1];
        }
    }
    arg
}

/// Lexical normalisation: `.` and empty components dropped, `..` removes the previous
/// component (never above the root).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Where an absolute path leads: as the kernel resolves it when it exists; otherwise its
/// normalised form with the longest existing ancestor's symlinks resolved.
pub fn resolve(path: &Path) -> PathBuf {
    if let Ok(real) = std::fs::canonicalize(path) {
        return real;
    }
    let normal = normalize(path);
    let mut ancestor = normal.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(ancestor) {
            let mut out = real;
            out.extend(rest.iter().rev());
            return out;
        }
        match (ancestor.parent(), ancestor.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                ancestor = parent;
            }
            _ => return normal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INST: &str = "/s/instances/3b2b4c5e-1b1a-4c2e-9a6f-1f2e3d4c5b6a";
    const RUN: &str = "/r/3b2b4c5e-1b1a-4c2e-9a6f-1f2e3d4c5b6a";

    fn scope() -> Scope<'static> {
        Scope::new(&[Path::new(INST), Path::new(RUN)], &Lexical)
    }

    fn haproxy(policy: &Policy, text: &str) -> Result<(), Vec<Violation>> {
        policy.check_haproxy(text, &scope())
    }

    /// The directive and line of the only violation of a one-line section body.
    fn refused(text: &str) -> (usize, String) {
        let v = haproxy(&Policy::default(), text).expect_err(text);
        (v[0].line, v[0].directive.clone())
    }

    fn accepted(text: &str) {
        if let Err(v) = haproxy(&Policy::default(), text) {
            panic!("{text}: {v:?}");
        }
    }

    #[test]
    fn haproxy_refusals_name_line_and_directive() {
        let cases: &[(&str, &str)] = &[
            ("global\n  chroot /var/empty", "chroot"),
            ("global\n  user root", "user"),
            ("global\n  group root", "group"),
            ("global\n  uid 0", "uid"),
            ("global\n  gid 0", "gid"),
            ("global\n  lua-load /tmp/x.lua", "lua-load"),
            (
                "global\n  lua-load-per-thread /tmp/x.lua",
                "lua-load-per-thread",
            ),
            ("global\n  lua-prepend-path /tmp/?.lua", "lua-prepend-path"),
            ("global\n  insecure-fork-wanted", "insecure-fork-wanted"),
            ("global\n  external-check", "external-check"),
            ("global\n  setenv X 1", "setenv"),
            ("global\n  presetenv X 1", "presetenv"),
            ("global\n  resetenv", "resetenv"),
            ("global\n  unsetenv X", "unsetenv"),
            ("global\n  ssl-engine rdrand", "ssl-engine"),
            ("global\n  ssl-provider legacy", "ssl-provider"),
            ("global\n  set-dumpable", "set-dumpable"),
            ("global\n  pidfile /run/haproxy.pid", "pidfile"),
            (
                "global\n  stats socket /run/haproxy/admin.sock mode 600",
                "stats socket",
            ),
            ("global\n  log /dev/log local0", "log"),
            (
                "global\n  server-state-file /var/lib/haproxy/state",
                "server-state-file",
            ),
            (
                "global\n  ssl-dh-param-file /etc/ssl/dh.pem",
                "ssl-dh-param-file",
            ),
            ("global\n  crt-base /etc/ssl/private", "crt-base"),
            ("global\n  ca-base /etc/ssl/certs", "ca-base"),
            (
                "global\n  h1-case-adjust-file /etc/shadow",
                "h1-case-adjust-file",
            ),
            ("global\n  unix-bind prefix /var/run/x", "unix-bind prefix"),
            ("global\nprogram p\n  command /bin/sh", "program section"),
            (
                "backend b\n  option external-check",
                "option external-check",
            ),
            (
                "backend b\n  external-check command /bin/true",
                "external-check",
            ),
            ("defaults\n  errorfile 503 /etc/passwd", "errorfile"),
            ("http-errors e\n  errorfile 503 /etc/passwd", "errorfile"),
            (
                "frontend fe\n  http-request return status 200 file /etc/shadow",
                "http-request file",
            ),
            (
                "frontend fe\n  http-request return status 200 lf-file /etc/shadow",
                "http-request lf-file",
            ),
            (
                "frontend fe\n  http-request deny errorfile /etc/shadow",
                "http-request errorfile",
            ),
            (
                "frontend fe\n  http-error status 503 errorfile /etc/shadow",
                "http-error errorfile",
            ),
            (
                "frontend fe\n  bind :443 ssl crt /etc/ssl/key.pem",
                "bind crt",
            ),
            (
                "frontend fe\n  bind :443 ssl crt-list /etc/list",
                "bind crt-list",
            ),
            (
                "frontend fe\n  bind :443 ssl crt {C}/a.pem ca-file /etc/ca.pem",
                "bind ca-file",
            ),
            (
                "frontend fe\n  bind :443 ssl crt {C}/a.pem crl-file /etc/crl.pem",
                "bind crl-file",
            ),
            ("frontend fe\n  bind /var/run/other.sock", "bind"),
            ("frontend fe\n  bind unix@/var/run/other.sock", "bind"),
            ("frontend fe\n  bind fd@3", "bind"),
            ("frontend fe\n  bind sockpair@4", "bind"),
            (
                "backend b\n  server s 1.2.3.4:443 ssl ca-file /etc/ssl/ca.pem",
                "server ca-file",
            ),
            (
                "backend b\n  server s 1.2.3.4:443 ssl crt /etc/ssl/me.pem",
                "server crt",
            ),
            ("backend b\n  server s /run/docker.sock", "server"),
            (
                "backend b\n  default-server ssl crt /etc/x.pem",
                "default-server crt",
            ),
            ("frontend fe\n  acl bad src -f /etc/hosts", "acl -f"),
            (
                "frontend fe\n  use_backend %[req.hdr(host),lower,map(/etc/shadow,b)]",
                "map()",
            ),
            (
                "frontend fe\n  http-request set-header x %[src,map_ip(/etc/x)]",
                "map_ip()",
            ),
            (
                "frontend fe\n  http-request set-header x %[env(HOME)]",
                "env()",
            ),
            (
                "frontend fe\n  http-request set-header x ${HOME}",
                "http-request",
            ),
            (
                "frontend fe\n  http-request set-header x \"$HOME\"",
                "http-request",
            ),
            (
                "frontend fe\n  filter spoe engine e config /etc/spoe.conf",
                "filter config",
            ),
            ("peers p\n  peer a /run/peer.sock", "peer"),
            (
                "frontend fe\n  log /run/systemd/journal/dev-log local0",
                "log",
            ),
            // Escapes and quotes cannot hide a path.
            ("defaults\n  errorfile 503 \"/etc/pass\"wd", "errorfile"),
            ("defaults\n  errorfile 503 \\x2fetc/passwd", "errorfile"),
            ("defaults\n  errorfile 503 '/etc/passwd'", "errorfile"),
            // Normalisation: out of the instance through `..`, or into another instance.
            (
                "defaults\n  errorfile 503 /s/instances/3b2b4c5e-1b1a-4c2e-9a6f-1f2e3d4c5b6a/../../../etc/passwd",
                "errorfile",
            ),
            (
                "defaults\n  errorfile 503 /s/instances/3b2b4c5e-1b1a-4c2e-9a6f-1f2e3d4c5b6a/../aaaaaaaa-1b1a-4c2e-9a6f-1f2e3d4c5b6a/x",
                "errorfile",
            ),
            ("defaults\n  errorfile 503 relative/file", "errorfile"),
        ];
        for (text, directive) in cases {
            let text = text.replace("{C}", &format!("{INST}/certificates"));
            assert_eq!(refused(&text), (2, directive.to_string()), "{text}");
        }
    }

    #[test]
    fn haproxy_words_split_where_haproxy_splits_them() {
        // haproxy separates words at every C isspace() character (checked against
        // haproxy 2.6: "\x0blua-load /x.lua" loads /x.lua).
        for space in ["\x0b", "\x0c", "\r"] {
            let text = format!("global\n{space}lua-load{space}/tmp/x.lua");
            assert_eq!(refused(&text), (2, "lua-load".to_string()), "{text:?}");
            let text = format!("frontend fe\n  bind :443 ssl{space}crt{space}/etc/ssl/x.pem");
            assert_eq!(refused(&text), (2, "bind crt".to_string()), "{text:?}");
        }
    }

    #[test]
    fn haproxy_own_files_and_plain_configs_pass() {
        accepted(&format!(
            "global\n  daemon\n  maxconn 100\n  stats socket {RUN}/stats.sock mode 600 level admin\n  log 127.0.0.1:514 local0\n  log stdout format raw local0\n  log fd@2 local0\n  server-state-file {RUN}/state\n\
             defaults\n  mode http\n  timeout client 5s # a comment /etc/passwd\n  errorfile 503 {INST}/custom503.http\n\
             userlist admins\n  user alice password '$6$abc'\n  group ops users alice\n\
             frontend fe\n  bind 127.0.0.1:443,127.0.0.2:443 ssl crt {INST}/certificates/www.pem ca-file {INST}/certificates/ca.pem verify optional\n  bind abns@local\n  bind {RUN}/fe.sock\n\
             \x20 acl api path_beg /api /etc/passwd\n  acl local src -f {INST}/certificates/nets.pem\n  http-request redirect location /x if !api\n  http-request return status 200 content-type text/plain string \"hi /etc/passwd\"\n  use_backend %[req.hdr(host),map({INST}/certificates/hosts.pem,be)]\n  use_backend be if {{ path_reg ^/foo$ }}\n\
             backend be\n  server s 127.0.0.1:80 check\n  server t {RUN}/app.sock\n"
        ));
        // Relative paths under an allowed base.
        accepted(&format!(
            "global\n  crt-base {INST}/certificates\nfrontend fe\n  bind :443 ssl crt www.pem\n"
        ));
        // The base is where the relative path leads.
        let v = haproxy(
            &Policy::default(),
            &format!("global\n  crt-base {INST}/certificates\nfrontend fe\n  bind :443 ssl crt ../../../../etc/x.pem\n"),
        )
        .unwrap_err();
        assert_eq!((v[0].line, v[0].directive.as_str()), (4, "bind crt"));
    }

    #[test]
    fn operator_allowances() {
        let policy = Policy::new(
            &["lua-load".into(), "log".into()],
            &[PathBuf::from("/etc/ssl/certs")],
        );
        assert!(
            haproxy(
                &policy,
                "global\n  lua-load /opt/lb.lua\n  log /dev/log local0\n"
            )
            .is_ok()
        );
        assert!(
            haproxy(
                &policy,
                "backend b\n  server s 1.2.3.4:443 ssl ca-file /etc/ssl/certs/ca.pem\n"
            )
            .is_ok()
        );
        assert!(haproxy(&policy, "global\n  chroot /\n").is_err());
        assert!(haproxy(&policy, "defaults\n  errorfile 503 /etc/ssl/certsX/x\n").is_err());
        // Every violation of a configuration is reported, in line order.
        let v = haproxy(
            &Policy::default(),
            "global\n  lua-load /a\n  user root\ndefaults\n  errorfile 503 /x\n",
        )
        .unwrap_err();
        let lines: Vec<_> = v.iter().map(|v| v.line).collect();
        assert_eq!(lines, vec![2, 3, 5]);
        assert_eq!(v[0].to_string(), "line 2: lua-load: loads code");
    }

    #[test]
    fn stunnel_refusals() {
        let check = |text: &str| Policy::default().check_stunnel(text, &scope());
        let cases: &[(&str, &str)] = &[
            ("exec = /bin/sh", "exec"),
            ("execArgs = sh -c id", "execArgs"),
            ("pty = yes", "pty"),
            ("chroot = /var/lib/stunnel", "chroot"),
            ("setuid = root", "setuid"),
            ("setgid = root", "setgid"),
            ("include = /etc/stunnel/conf.d", "include"),
            ("engine = dynamic", "engine"),
            ("engineCtrl = SO_PATH:/tmp/x.so", "engineCtrl"),
            ("output = /var/log/stunnel.log", "output"),
            ("CAfile = /etc/ssl/certs/ca-certificates.crt", "CAfile"),
            ("CApath = /etc/ssl/certs", "CApath"),
            ("CRLfile = /etc/crl.pem", "CRLfile"),
            ("cert = /etc/ssl/private/key.pem", "cert"),
            ("key = /etc/ssl/private/key.pem", "key"),
            ("connect = /run/docker.sock", "connect"),
            ("RNDfile = /etc/shadow", "RNDfile"),
        ];
        for (option, name) in cases {
            let text = format!("[svc]\naccept = 127.0.0.1:8443\n{option}\n");
            let v = check(&text).expect_err(option);
            assert_eq!((v[0].line, v[0].directive.as_str()), (3, *name), "{option}");
        }
        assert!(
            check(&format!(
                "[svc]\naccept = 127.0.0.1:8443\nconnect = 127.0.0.1:80\ncert = {INST}/certificates/a.pem\noutput = {RUN}/stunnel.log\n"
            ))
            .is_ok()
        );
        let allowed = Policy::new(&["CAfile".into()], &[]);
        assert!(
            allowed
                .check_stunnel("[s]\nCAfile = /etc/ssl/certs/ca.pem\n", &scope())
                .is_ok()
        );
    }

    #[test]
    fn tokenizer() {
        let w = haproxy_words(r#"  bind "a b"c 'd"e' f\ g \x41 # tail"#).unwrap();
        let w: Vec<String> = w
            .iter()
            .map(|w| String::from_utf8_lossy(w).into())
            .collect();
        assert_eq!(w, vec!["bind", "a bc", "d\"e", "f g", "A"]);
        assert!(haproxy_words("x ${A}").is_err());
        assert!(haproxy_words("x '${A}'").is_ok());
        assert!(haproxy_words("acl a path_reg ^/x$").is_ok());
    }

    #[test]
    fn symlinks_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let inst = dir.path().join("inst");
        std::fs::create_dir_all(inst.join("certificates")).unwrap();
        std::os::unix::fs::symlink("/etc", inst.join("certificates/out")).unwrap();
        let scope = Scope::new(&[&inst], &FileSystem);
        let text = format!(
            "defaults\n  errorfile 503 {}/certificates/out/passwd\n",
            inst.display()
        );
        assert!(Policy::default().check_haproxy(&text, &scope).is_err());
        let text = format!(
            "defaults\n  errorfile 503 {}/certificates/new.pem\n",
            inst.display()
        );
        assert!(Policy::default().check_haproxy(&text, &scope).is_ok());
    }
}
