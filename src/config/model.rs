//! The typed configuration and its validation from a parsed UCI [`Package`].

use std::path::Path;

use log::LevelFilter;
use serde::Serialize;
use serde::Serializer;

use super::diagnostic::Diagnostic;
use super::diagnostic::SectionRef;
use super::prefix::IpPrefix;
use super::uci::Package;
use super::uci::Section;
use super::uci::Value;

/// Highest rate accepted anywhere, in kbit/s (1 Tbit/s): anything above is a typo, and the
/// limit keeps bit/s and byte/s conversions far from overflow.
pub const MAX_KBIT: u64 = 1_000_000_000;
/// Accepted link-layer overhead range in bytes (as sqm-scripts/cake: negative compensates for
/// headers the kernel counts that the link does not carry).
pub const OVERHEAD_RANGE: std::ops::RangeInclusive<i32> = -64..=256;
/// Longest circuit name in bytes.
pub const MAX_CIRCUIT_NAME: usize = 64;

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// The `globals` section (defaults when absent).
    pub globals: Globals,
    /// `interface` sections, in file order.
    pub interfaces: Vec<Interface>,
    /// `circuit` sections, in file order.
    pub circuits: Vec<Circuit>,
}

/// `config globals`: switches for the whole daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Globals {
    /// `option enabled` (default on): off stops offload and shaping altogether.
    pub enabled: bool,
    /// `option offload` (default on): flow offload.
    pub offload: bool,
    /// `option rtt` (default on): passive latency monitoring.
    pub rtt: bool,
    /// `option log_level` (default `info`).
    #[serde(serialize_with = "serialize_level")]
    pub log_level: LevelFilter,
    /// `option steering` (default `auto`): CPU steering of the frames the kernel handles.
    pub steering: Steering,
    /// `option steering_cpus` (default: every online CPU): the CPUs steering spreads over.
    pub steering_cpus: Option<Vec<u32>>,
    /// `option steering_queue` (default [`STEERING_QUEUE`]): frames queued per CPU.
    pub steering_queue: u32,
}

impl Default for Globals {
    fn default() -> Self {
        Globals {
            enabled: true,
            offload: true,
            rtt: true,
            log_level: LevelFilter::Info,
            steering: Steering::Auto,
            steering_cpus: None,
            steering_queue: STEERING_QUEUE,
        }
    }
}

/// `option steering`: whether frames the kernel handles are spread over the CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Steering {
    /// Where it helps: a device with one receive queue, or one carrying PPPoE (which NICs do
    /// not hash), with no RPS configured, on a router with more than one CPU.
    #[default]
    Auto,
    /// On every device the XDP program runs on (still not with one CPU or without XDP).
    On,
    /// Never.
    Off,
}

/// Default of `option steering_queue`: frames each CPU's queue holds (cpumap's qsize). A
/// queued frame holds a page: 1024 is at most 4 MB per CPU, about what the kernel's own
/// backlog (netdev_max_backlog, 1000) allows.
pub const STEERING_QUEUE: u32 = 1024;
/// Largest CPU number steering can use (`BPFQOS_MAX_CPUS` - 1).
pub const STEERING_MAX_CPU: u32 = 255;

fn serialize_level<S: Serializer>(level: &LevelFilter, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&level.as_str().to_ascii_lowercase())
}

/// The leaf qdisc of a shaped direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Qdisc {
    /// `cake`: CAKE shapes (with HTB above it only for circuits).
    #[default]
    Cake,
    /// `fq_codel`: HTB shapes, fq_codel queues.
    FqCodel,
    /// `fifo`: HTB shapes with its plain FIFO leaves: an exact rate limit without AQM, for
    /// kernels that have neither CAKE nor fq_codel, and for measurements.
    Fifo,
}

/// CAKE's priority tiers (`option diffserv`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Diffserv {
    /// One tier, DSCP ignored (sqm's piece_of_cake).
    #[default]
    Besteffort,
    /// Three tiers (bulk, best effort, voice).
    Diffserv3,
    /// Four tiers.
    Diffserv4,
    /// Eight tiers.
    Diffserv8,
    /// IP precedence.
    Precedence,
}

/// How the link frames packets (`option linklayer`), as sqm-scripts and CAKE model it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkLayer {
    /// Ethernet-like: bytes as they are, plus the overhead.
    #[default]
    Ethernet,
    /// ATM cells (ADSL): 53 bytes carry 48.
    Atm,
    /// PTM (VDSL2): 64/65 encoding.
    Ptm,
}

/// `config interface 'NAME'`: a link to offload from and/or shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interface {
    /// The section name; for an anonymous section, its `network`, else its `device`.
    pub name: String,
    /// `option network`: logical OpenWrt interface (resolved to a device at run time).
    pub network: Option<String>,
    /// `option device`: Linux device name.
    pub device: Option<String>,
    /// `option offload` (default on): offload flows through this interface.
    pub offload: bool,
    /// `option wan`: the interface faces the Internet (its RTTs are WAN-side RTTs); unset:
    /// whether it is shaped.
    pub wan: Option<bool>,
    /// `option upload`: egress shaping rate in kbit/s; 0 = not shaped.
    pub upload_kbit: u64,
    /// `option download`: ingress shaping rate in kbit/s; 0 = not shaped.
    pub download_kbit: u64,
    /// `option qdisc` (default cake).
    pub qdisc: Qdisc,
    /// `option overhead`: per-packet link-layer overhead in bytes (default 0).
    pub overhead: i32,
    /// `option mpu`: minimum packet unit, bytes (default 0).
    pub mpu: u32,
    /// `option linklayer` (default ethernet).
    pub linklayer: LinkLayer,
    /// `option diffserv` (default besteffort): CAKE's tiers.
    pub diffserv: Diffserv,
    /// `option autorate` (default off): let the shaper rate follow the link.
    pub autorate: bool,
    /// `option min_upload` (kbit/s): autorate's lower bound for upload.
    pub min_upload_kbit: Option<u64>,
    /// `option max_upload` (kbit/s): autorate's upper bound for upload.
    pub max_upload_kbit: Option<u64>,
    /// `option min_download` (kbit/s): autorate's lower bound for download.
    pub min_download_kbit: Option<u64>,
    /// `option max_download` (kbit/s): autorate's upper bound for download.
    pub max_download_kbit: Option<u64>,
    /// `option autorate_delay` (ms, default [`AUTORATE_DELAY_MS`]): excess latency from which
    /// autorate sees the line as delayed.
    pub autorate_delay_ms: u32,
}

/// Default of `option autorate_delay`, ms (docs/autorate.md says why).
pub const AUTORATE_DELAY_MS: u32 = 8;

/// `config circuit`: a set of hosts/subnets sharing one rate limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Circuit {
    /// `option name`, else the section name.
    pub name: String,
    /// `list ip` (or space-separated `option ip`): addresses and prefixes.
    pub ips: Vec<IpPrefix>,
    /// `option upload` in kbit/s; 0 = no circuit limit.
    pub upload_kbit: u64,
    /// `option download` in kbit/s; 0 = no circuit limit.
    pub download_kbit: u64,
}

/// Collects diagnostics for one file.
struct Report<'a> {
    file: &'a Path,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl Report<'_> {
    fn diag(
        &self,
        line: u32,
        section: &SectionRef,
        option: Option<&str>,
        message: String,
    ) -> Diagnostic {
        Diagnostic {
            file: self.file.to_path_buf(),
            line: Some(line),
            section: Some(section.clone()),
            option: option.map(str::to_owned),
            message,
        }
    }

    fn error(&mut self, line: u32, section: &SectionRef, option: Option<&str>, message: String) {
        let d = self.diag(line, section, option, message);
        self.errors.push(d);
    }

    fn warn(&mut self, line: u32, section: &SectionRef, option: Option<&str>, message: String) {
        let d = self.diag(line, section, option, message);
        self.warnings.push(d);
    }
}

/// Builds the typed config from a syntactically valid package. Returns the config (meaningful
/// only when there are no errors), errors and warnings.
pub fn build(file: &Path, package: &Package) -> (Config, Vec<Diagnostic>, Vec<Diagnostic>) {
    let mut report = Report {
        file,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let mut config = Config {
        globals: Globals::default(),
        interfaces: Vec::new(),
        circuits: Vec::new(),
    };
    // Where each accepted item came from, for cross-section checks.
    let mut globals_at: Option<u32> = None;
    let mut interface_origin: Vec<(SectionRef, &Section)> = Vec::new();
    let mut circuit_origin: Vec<(SectionRef, &Section)> = Vec::new();

    for (section, reference) in package.sections.iter().zip(package.show_refs()) {
        let sref = SectionRef {
            section_type: section.section_type.clone(),
            name: (!section.anonymous).then(|| section.name.clone()),
            reference,
        };
        match section.section_type.as_str() {
            "globals" => {
                if let Some(first) = globals_at {
                    report.error(
                        section.line,
                        &sref,
                        None,
                        format!("duplicate globals section (the first one is on line {first}); merge them"),
                    );
                    continue;
                }
                globals_at = Some(section.line);
                config.globals = globals(&mut report, &sref, section);
            }
            // Sections with errors are kept too (the config is not used then), so that the
            // checks across sections still run on what is valid in them.
            "interface" => {
                config
                    .interfaces
                    .push(interface(&mut report, &sref, section));
                interface_origin.push((sref, section));
            }
            "circuit" => {
                config.circuits.push(circuit(&mut report, &sref, section));
                circuit_origin.push((sref, section));
            }
            other => report.warn(
                section.line,
                &sref,
                None,
                format!(
                    "unknown section type '{other}' (ignored; known: globals, interface, circuit)"
                ),
            ),
        }
    }

    check_unique_interfaces(&mut report, &config.interfaces, &interface_origin);
    check_unique_circuits(&mut report, &config.circuits, &circuit_origin);
    check_overlaps(&mut report, &config.circuits, &circuit_origin);

    // Cross-section checks come last; report in file order, like a compiler.
    report.errors.sort_by_key(|d| d.line);
    report.warnings.sort_by_key(|d| d.line);
    (config, report.errors, report.warnings)
}

/// One option's value as the typed layer sees it.
struct Opt<'a> {
    name: &'a str,
    value: &'a str,
    line: u32,
}

/// Walks a section's options, handing single values to `f` and reporting lists where a single
/// value is expected. `f` returns false for an unknown option, which becomes a warning.
fn for_each_single<'s>(
    report: &mut Report<'_>,
    sref: &SectionRef,
    section: &'s Section,
    list_ok: &[&str],
    mut f: impl FnMut(&mut Report<'_>, Opt<'s>) -> bool,
) {
    for o in &section.options {
        let value = match &o.value {
            Value::Single(v) => v.as_str(),
            Value::List(items) if list_ok.contains(&o.name.as_str()) => {
                for (v, line) in items {
                    f(
                        report,
                        Opt {
                            name: &o.name,
                            value: v,
                            line: *line,
                        },
                    );
                }
                continue;
            }
            Value::List(_) => {
                if known(&section.section_type, &o.name) {
                    report.error(
                        o.line,
                        sref,
                        Some(&o.name),
                        "expected a single value ('option'), got a 'list'".into(),
                    );
                } else {
                    report.warn(
                        o.line,
                        sref,
                        Some(&o.name),
                        "unknown option (ignored)".into(),
                    );
                }
                continue;
            }
        };
        if !f(
            report,
            Opt {
                name: &o.name,
                value,
                line: o.line,
            },
        ) {
            report.warn(
                o.line,
                sref,
                Some(&o.name),
                "unknown option (ignored)".into(),
            );
        }
    }
}

/// The options of each section type (anything else is warned about and ignored).
pub const OPTIONS: &[(&str, &[&str])] = &[
    (
        "globals",
        &[
            "enabled",
            "offload",
            "rtt",
            "log_level",
            "steering",
            "steering_cpus",
            "steering_queue",
        ],
    ),
    (
        "interface",
        &[
            "network",
            "device",
            "offload",
            "wan",
            "upload",
            "download",
            "qdisc",
            "overhead",
            "mpu",
            "linklayer",
            "diffserv",
            "autorate",
            "min_upload",
            "max_upload",
            "min_download",
            "max_download",
            "autorate_delay",
        ],
    ),
    ("circuit", &["name", "ip", "upload", "download"]),
];

fn known(section_type: &str, option: &str) -> bool {
    OPTIONS
        .iter()
        .any(|(t, opts)| *t == section_type && opts.contains(&option))
}

fn globals(report: &mut Report<'_>, sref: &SectionRef, section: &Section) -> Globals {
    let mut g = Globals::default();
    for_each_single(report, sref, section, &[], |report, o| {
        let slot = match o.name {
            "enabled" => &mut g.enabled,
            "offload" => &mut g.offload,
            "rtt" => &mut g.rtt,
            "log_level" => {
                match parse_log_level(o.value) {
                    Ok(l) => g.log_level = l,
                    Err(m) => report.error(o.line, sref, Some(o.name), m),
                }
                return true;
            }
            "steering" | "steering_cpus" | "steering_queue" => {
                let r = match o.name {
                    "steering" => parse_steering(o.value).map(|v| g.steering = v),
                    "steering_cpus" => parse_cpu_list(o.value).map(|v| g.steering_cpus = Some(v)),
                    _ => parse_steering_queue(o.value).map(|v| g.steering_queue = v),
                };
                if let Err(m) = r {
                    report.error(o.line, sref, Some(o.name), m);
                }
                return true;
            }
            _ => return false,
        };
        match parse_bool(o.value) {
            Ok(b) => *slot = b,
            Err(m) => report.error(o.line, sref, Some(o.name), m),
        }
        true
    });
    g
}

fn interface(report: &mut Report<'_>, sref: &SectionRef, section: &Section) -> Interface {
    let mut i = Interface {
        name: String::new(),
        network: None,
        device: None,
        offload: true,
        wan: None,
        upload_kbit: 0,
        download_kbit: 0,
        qdisc: Qdisc::Cake,
        overhead: 0,
        mpu: 0,
        linklayer: LinkLayer::Ethernet,
        diffserv: Diffserv::Besteffort,
        autorate: false,
        min_upload_kbit: None,
        max_upload_kbit: None,
        min_download_kbit: None,
        max_download_kbit: None,
        autorate_delay_ms: AUTORATE_DELAY_MS,
    };
    let mut autorate_line = section.line;
    // Options whose value was rejected: checks that combine options skip them, so one mistake
    // gives one error.
    let mut failed: Vec<&str> = Vec::new();
    for_each_single(report, sref, section, &[], |report, o| {
        let result = match o.name {
            "network" => parse_network(o.value).map(|v| i.network = Some(v)),
            "device" => parse_ifname(o.value).map(|v| i.device = Some(v)),
            "offload" => parse_bool(o.value).map(|v| i.offload = v),
            "wan" => parse_bool(o.value).map(|v| i.wan = Some(v)),
            "upload" => parse_kbit(o.value).map(|v| i.upload_kbit = v),
            "download" => parse_kbit(o.value).map(|v| i.download_kbit = v),
            "qdisc" => parse_qdisc(o.value).map(|v| i.qdisc = v),
            "overhead" => parse_overhead(o.value).map(|v| i.overhead = v),
            "mpu" => parse_mpu(o.value).map(|v| i.mpu = v),
            "linklayer" => parse_linklayer(o.value).map(|v| i.linklayer = v),
            "diffserv" => parse_diffserv(o.value).map(|v| i.diffserv = v),
            "autorate" => {
                autorate_line = o.line;
                parse_bool(o.value).map(|v| i.autorate = v)
            }
            "min_upload" => parse_bound(o.value).map(|v| i.min_upload_kbit = Some(v)),
            "max_upload" => parse_bound(o.value).map(|v| i.max_upload_kbit = Some(v)),
            "min_download" => parse_bound(o.value).map(|v| i.min_download_kbit = Some(v)),
            "max_download" => parse_bound(o.value).map(|v| i.max_download_kbit = Some(v)),
            "autorate_delay" => parse_delay_ms(o.value).map(|v| i.autorate_delay_ms = v),
            _ => return false,
        };
        if let Err(m) = result {
            report.error(o.line, sref, Some(o.name), m);
            failed.push(o.name);
        }
        true
    });

    i.name = if section.anonymous {
        i.network
            .clone()
            .or_else(|| i.device.clone())
            .unwrap_or_default()
    } else {
        section.name.clone()
    };
    let has = |name: &str| section.options.iter().any(|o| o.name == name);
    if !has("network") && !has("device") {
        report.error(
            section.line,
            sref,
            None,
            "needs 'option network' (an OpenWrt interface such as wan) or 'option device' (a Linux device such as eth0)".into(),
        );
    }
    if i.autorate {
        check_autorate(report, sref, section, &i, autorate_line, &failed);
    }
    i
}

/// Autorate moves a direction's rate between its min_ and max_ bound. A direction takes part
/// when both bounds are set; the configured rate is the starting point and must lie between.
fn check_autorate(
    report: &mut Report<'_>,
    sref: &SectionRef,
    section: &Section,
    i: &Interface,
    autorate_line: u32,
    failed: &[&str],
) {
    let line_of = |name: &str| {
        section
            .options
            .iter()
            .find(|o| o.name == name)
            .map_or(section.line, |o| o.line)
    };
    let mut any = false;
    for (dir, rate, min, max) in [
        (
            "upload",
            i.upload_kbit,
            i.min_upload_kbit,
            i.max_upload_kbit,
        ),
        (
            "download",
            i.download_kbit,
            i.min_download_kbit,
            i.max_download_kbit,
        ),
    ] {
        let (min_name, max_name) = (format!("min_{dir}"), format!("max_{dir}"));
        if [dir, min_name.as_str(), max_name.as_str()]
            .iter()
            .any(|n| failed.contains(n))
        {
            any = true;
            continue;
        }
        match (min, max) {
            (None, None) => {}
            (Some(_), None) => report.error(
                line_of(&min_name),
                sref,
                Some(&min_name),
                format!("autorate needs both min_{dir} and max_{dir}; max_{dir} is missing"),
            ),
            (None, Some(_)) => report.error(
                line_of(&max_name),
                sref,
                Some(&max_name),
                format!("autorate needs both min_{dir} and max_{dir}; min_{dir} is missing"),
            ),
            (Some(lo), Some(hi)) => {
                any = true;
                if lo > hi {
                    report.error(
                        line_of(&min_name),
                        sref,
                        Some(&min_name),
                        format!("min_{dir} {lo} is above max_{dir} {hi}"),
                    );
                } else if rate == 0 {
                    report.error(
                        line_of(dir),
                        sref,
                        Some(dir),
                        format!("autorate on {dir} needs a starting rate between min_{dir} {lo} and max_{dir} {hi}, got 0 (not shaped)"),
                    );
                } else if rate < lo || rate > hi {
                    report.error(
                        line_of(dir),
                        sref,
                        Some(dir),
                        format!("{rate} kbit/s is outside autorate's range min_{dir} {lo} .. max_{dir} {hi}"),
                    );
                }
            }
        }
    }
    let bounds_given = [
        i.min_upload_kbit,
        i.max_upload_kbit,
        i.min_download_kbit,
        i.max_download_kbit,
    ]
    .iter()
    .any(Option::is_some);
    if !any && !bounds_given {
        report.error(
            autorate_line,
            sref,
            Some("autorate"),
            "autorate needs min_/max_ bounds for upload and/or download (e.g. min_download and max_download)".into(),
        );
    }
}

fn circuit(report: &mut Report<'_>, sref: &SectionRef, section: &Section) -> Circuit {
    let mut c = Circuit {
        name: String::new(),
        ips: Vec::new(),
        upload_kbit: 0,
        download_kbit: 0,
    };
    let mut named = None;
    for_each_single(report, sref, section, &["ip"], |report, o| {
        let result = match o.name {
            "name" => parse_circuit_name(o.value).map(|v| named = Some(v)),
            "upload" => parse_kbit(o.value).map(|v| c.upload_kbit = v),
            "download" => parse_kbit(o.value).map(|v| c.download_kbit = v),
            // Space-separated lists in an option, as many OpenWrt options allow.
            "ip" => o.value.split_ascii_whitespace().try_for_each(|word| {
                let p = word.parse::<IpPrefix>().map_err(|e| e.to_string())?;
                if !c.ips.contains(&p) {
                    c.ips.push(p);
                }
                Ok(())
            }),
            _ => return false,
        };
        if let Err(m) = result {
            report.error(o.line, sref, Some(o.name), m);
        }
        true
    });
    let has = |name: &str| section.options.iter().any(|o| o.name == name);
    c.name = match named {
        Some(n) => n,
        None if !section.anonymous => section.name.clone(),
        // An invalid name was reported already.
        None if has("name") => String::new(),
        None => {
            report.error(
                section.line,
                sref,
                None,
                "needs 'option name' (anonymous circuit sections have no other name)".into(),
            );
            String::new()
        }
    };
    if !has("ip") {
        report.error(
            section.line,
            sref,
            None,
            "needs at least one 'list ip' (address or prefix)".into(),
        );
    }
    c
}

/// The line of `option` in `section`, else the section's line.
fn option_line(section: &Section, option: &str) -> u32 {
    section
        .options
        .iter()
        .find(|o| o.name == option)
        .map_or(section.line, |o| o.line)
}

fn check_unique_interfaces(
    report: &mut Report<'_>,
    interfaces: &[Interface],
    origin: &[(SectionRef, &Section)],
) {
    for (n, (i, (sref, section))) in interfaces.iter().zip(origin).enumerate() {
        let earlier = interfaces[..n].iter().zip(origin);
        for (prev, (prev_ref, prev_section)) in earlier {
            if i.device.is_some() && i.device == prev.device {
                report.error(
                    option_line(section, "device"),
                    sref,
                    Some("device"),
                    format!(
                        "device '{}' is already used by {prev_ref} (line {})",
                        i.device.as_deref().unwrap_or_default(),
                        option_line(prev_section, "device")
                    ),
                );
                break;
            }
            if i.network.is_some() && i.network == prev.network {
                report.error(
                    option_line(section, "network"),
                    sref,
                    Some("network"),
                    format!(
                        "network '{}' is already used by {prev_ref} (line {})",
                        i.network.as_deref().unwrap_or_default(),
                        option_line(prev_section, "network")
                    ),
                );
                break;
            }
            if !i.name.is_empty() && i.name == prev.name {
                report.error(
                    section.line,
                    sref,
                    None,
                    format!(
                        "interface name '{}' is already used by {prev_ref} (line {}); name the section",
                        i.name, prev_section.line
                    ),
                );
                break;
            }
        }
    }
}

fn check_unique_circuits(
    report: &mut Report<'_>,
    circuits: &[Circuit],
    origin: &[(SectionRef, &Section)],
) {
    // By name, the first circuit that has it: linear in the number of circuits (tens of
    // thousands in an ISP's file).
    let mut first: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (n, (c, (sref, section))) in circuits.iter().zip(origin).enumerate() {
        if c.name.is_empty() {
            continue;
        }
        let prev = *first.entry(c.name.as_str()).or_insert(n);
        if prev != n {
            let (prev_ref, prev_section) = &origin[prev];
            let has_name = section.options.iter().any(|o| o.name == "name");
            report.error(
                option_line(section, "name"),
                sref,
                has_name.then_some("name"),
                format!(
                    "circuit name '{}' is already used by {prev_ref} (line {})",
                    c.name, prev_section.line
                ),
            );
        }
    }
}

/// Circuits are looked up by longest prefix match, so a prefix inside another circuit's
/// prefix would silently take its hosts away; any overlap between two circuits is an error.
/// Inside one circuit an overlap is harmless and only warned about.
fn check_overlaps(
    report: &mut Report<'_>,
    circuits: &[Circuit],
    origin: &[(SectionRef, &Section)],
) {
    // Sorted by (family, address, length), a prefix can only be inside prefixes that come
    // before it and are still "open": a stack of nested prefixes makes this O(n log n).
    let mut all: Vec<(IpPrefix, usize)> = circuits
        .iter()
        .enumerate()
        .flat_map(|(ci, c)| c.ips.iter().map(move |p| (*p, ci)))
        .collect();
    all.sort_by_key(|(p, _)| (p.addr.is_ipv6(), p.addr, p.len));
    let mut open: Vec<(IpPrefix, usize)> = Vec::new();
    for (p, ci) in all {
        while open.last().is_some_and(|(outer, _)| !outer.contains(&p)) {
            open.pop();
        }
        if let Some(&(outer, oci)) = open.last() {
            let (sref, section) = &origin[ci];
            let line = ip_line(section, &p);
            if oci == ci {
                report.warn(
                    line,
                    sref,
                    Some("ip"),
                    format!("{p} is already covered by {outer} in the same circuit"),
                );
            } else {
                let (prev_ref, prev_section) = &origin[oci];
                report.error(
                    line,
                    sref,
                    Some("ip"),
                    format!(
                        "{p} overlaps {outer} of {prev_ref} (line {}); a host may belong to one circuit only",
                        ip_line(prev_section, &outer)
                    ),
                );
            }
            // Only the outermost prefix stays open, so every nested one is reported against
            // it, once.
            continue;
        }
        open.push((p, ci));
    }
}

/// The line of the `ip` item that produced `p`.
fn ip_line(section: &Section, p: &IpPrefix) -> u32 {
    for o in section.options.iter().filter(|o| o.name == "ip") {
        let items: Vec<(&str, u32)> = match &o.value {
            Value::Single(v) => vec![(v.as_str(), o.line)],
            Value::List(items) => items.iter().map(|(v, l)| (v.as_str(), *l)).collect(),
        };
        for (v, line) in items {
            if v.split_ascii_whitespace()
                .any(|w| w.parse::<IpPrefix>().ok().as_ref() == Some(p))
            {
                return line;
            }
        }
    }
    section.line
}

/// UCI booleans, as OpenWrt's `config_get_bool` reads them.
pub fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "1" | "yes" | "on" | "true" | "enabled" => Ok(true),
        "0" | "no" | "off" | "false" | "disabled" => Ok(false),
        _ => Err(format!(
            "expected a boolean (1/0, yes/no, on/off, true/false, enabled/disabled), got '{v}'"
        )),
    }
}

/// A rate in kbit/s: decimal digits only (no units, as sqm-scripts).
pub fn parse_kbit(v: &str) -> Result<u64, String> {
    if v.starts_with('-') && v.len() > 1 && v[1..].bytes().all(|c| c.is_ascii_digit()) {
        return Err(format!("rates cannot be negative, got '{v}'"));
    }
    if v.is_empty() || !v.bytes().all(|c| c.is_ascii_digit()) {
        return Err(format!("expected kbit/s integer, got '{v}'"));
    }
    match v.parse::<u64>() {
        Ok(n) if n <= MAX_KBIT => Ok(n),
        _ => Err(format!(
            "{v} kbit/s is out of range (at most {MAX_KBIT} kbit/s = 1 Tbit/s)"
        )),
    }
}

/// An autorate bound: a rate of at least 1 kbit/s.
fn parse_bound(v: &str) -> Result<u64, String> {
    match parse_kbit(v)? {
        0 => Err("autorate bounds must be at least 1 kbit/s, got '0'".into()),
        n => Ok(n),
    }
}

fn parse_delay_ms(v: &str) -> Result<u32, String> {
    match v.parse::<u32>() {
        Ok(n) if (1..=1000).contains(&n) && v.bytes().all(|c| c.is_ascii_digit()) => Ok(n),
        _ => Err(format!("expected 1..=1000 ms, got '{v}'")),
    }
}

fn parse_qdisc(v: &str) -> Result<Qdisc, String> {
    match v {
        "cake" => Ok(Qdisc::Cake),
        "fq_codel" => Ok(Qdisc::FqCodel),
        "fifo" => Ok(Qdisc::Fifo),
        _ => Err(format!("expected 'cake', 'fq_codel' or 'fifo', got '{v}'")),
    }
}

fn parse_diffserv(v: &str) -> Result<Diffserv, String> {
    match v {
        "besteffort" => Ok(Diffserv::Besteffort),
        "diffserv3" => Ok(Diffserv::Diffserv3),
        "diffserv4" => Ok(Diffserv::Diffserv4),
        "diffserv8" => Ok(Diffserv::Diffserv8),
        "precedence" => Ok(Diffserv::Precedence),
        _ => Err(format!(
            "expected one of besteffort, diffserv3, diffserv4, diffserv8, precedence, got '{v}'"
        )),
    }
}

fn parse_linklayer(v: &str) -> Result<LinkLayer, String> {
    match v {
        "ethernet" | "none" => Ok(LinkLayer::Ethernet),
        "atm" | "adsl" => Ok(LinkLayer::Atm),
        "ptm" | "vdsl" => Ok(LinkLayer::Ptm),
        _ => Err(format!("expected 'ethernet', 'atm' or 'ptm', got '{v}'")),
    }
}

/// A minimum packet unit: 0..=256 bytes (sqm's range).
fn parse_mpu(v: &str) -> Result<u32, String> {
    match v.parse::<u32>() {
        Ok(n) if n <= 256 && v.bytes().all(|c| c.is_ascii_digit()) => Ok(n),
        _ => Err(format!("expected 0..=256 bytes, got '{v}'")),
    }
}

fn parse_overhead(v: &str) -> Result<i32, String> {
    let (lo, hi) = (OVERHEAD_RANGE.start(), OVERHEAD_RANGE.end());
    let digits = v.strip_prefix('-').unwrap_or(v);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "expected an integer number of bytes ({lo}..={hi}), got '{v}'"
        ));
    }
    match v.parse::<i32>() {
        Ok(n) if OVERHEAD_RANGE.contains(&n) => Ok(n),
        _ => Err(format!(
            "overhead must be within {lo}..={hi} bytes, got '{v}'"
        )),
    }
}

fn parse_steering(v: &str) -> Result<Steering, String> {
    if v == "auto" {
        return Ok(Steering::Auto);
    }
    match parse_bool(v) {
        Ok(true) => Ok(Steering::On),
        Ok(false) => Ok(Steering::Off),
        Err(_) => Err(format!("expected auto, 1 or 0, got '{v}'")),
    }
}

/// A CPU list as the kernel writes them (`0-3,6`), or numbers separated by spaces (`0 1 2`);
/// sorted, without duplicates.
pub fn parse_cpu_list(v: &str) -> Result<Vec<u32>, String> {
    let mut cpus = Vec::new();
    let bad = || format!("expected CPU numbers such as '0-3' or '0 2 3', got '{v}'");
    for part in v.split([',', ' ', '\t']).filter(|p| !p.is_empty()) {
        let number = |s: &str| -> Result<u32, String> {
            if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad());
            }
            match s.parse::<u32>() {
                Ok(n) if n <= STEERING_MAX_CPU => Ok(n),
                _ => Err(format!(
                    "CPU {s} is beyond what steering supports (0-{STEERING_MAX_CPU})"
                )),
            }
        };
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => {
                let n = number(part)?;
                (n, n)
            }
        };
        if a > b {
            return Err(format!("'{part}': a range goes upwards"));
        }
        cpus.extend(a..=b);
    }
    if cpus.is_empty() {
        return Err(bad());
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

fn parse_steering_queue(v: &str) -> Result<u32, String> {
    match v.parse::<u32>() {
        Ok(n) if (8..=16384).contains(&n) && v.bytes().all(|c| c.is_ascii_digit()) => Ok(n),
        _ => Err(format!(
            "expected a queue length of 8 to 16384 frames (the kernel's cpumap limit), got '{v}'"
        )),
    }
}

fn parse_log_level(v: &str) -> Result<LevelFilter, String> {
    match v {
        "off" => Ok(LevelFilter::Off),
        "error" => Ok(LevelFilter::Error),
        "warn" | "warning" => Ok(LevelFilter::Warn),
        "info" => Ok(LevelFilter::Info),
        "debug" => Ok(LevelFilter::Debug),
        "trace" => Ok(LevelFilter::Trace),
        _ => Err(format!(
            "expected one of off, error, warn, info, debug, trace, got '{v}'"
        )),
    }
}

/// A Linux interface name, as the kernel's `dev_valid_name` accepts it.
pub fn parse_ifname(v: &str) -> Result<String, String> {
    if v.len() > 15 {
        return Err(format!(
            "device name '{v}' is {} bytes long; Linux allows at most 15",
            v.len()
        ));
    }
    if v == "." || v == ".." {
        return Err(format!("'{v}' is not a valid device name"));
    }
    if let Some(c) = v
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace())
    {
        return Err(format!(
            "device name '{v}' contains {c:?}, which Linux does not allow"
        ));
    }
    Ok(v.to_owned())
}

/// An OpenWrt logical interface: a UCI section name of /etc/config/network.
fn parse_network(v: &str) -> Result<String, String> {
    if v.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
        Ok(v.to_owned())
    } else {
        Err(format!(
            "'{v}' is not an OpenWrt interface name (letters, digits and _ only, e.g. wan)"
        ))
    }
}

fn parse_circuit_name(v: &str) -> Result<String, String> {
    if v.len() > MAX_CIRCUIT_NAME {
        return Err(format!(
            "circuit names are limited to {MAX_CIRCUIT_NAME} bytes, got {}",
            v.len()
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(format!("circuit name {v:?} contains control characters"));
    }
    Ok(v.to_owned())
}
