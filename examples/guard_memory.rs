//! Feeds distinct client addresses straight to the guard state and reports its resident
//! memory and the time per check. No socket is opened: the addresses, taken in order
//! from 127.0.0.1 upwards, are only table keys.
//!
//! Usage: `guard_memory [ADDRESSES] [MAX_ENTRIES]` (defaults 1000000 and 100000). Each
//! address makes one request to CC defence and limitReq, both enabled with limits high
//! enough that nothing is rejected. Run it once per setting: the allocator keeps freed
//! memory, so one process cannot measure two settings apart.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use http::Uri;
use minigateway::config::LimitReqMode;
use minigateway::guard::cc::CcSettings;
use minigateway::guard::ip_list::IpList;
use minigateway::guard::limit_req::LimitReqSettings;
use minigateway::guard::{GuardSettings, Guards};

/// Returns this process's resident set size in KiB, from /proc/self/status.
fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn parse_arg(value: Option<String>, default: usize, name: &str) -> usize {
    match value {
        None => default,
        Some(text) => text.replace('_', "").parse().unwrap_or_else(|_| {
            eprintln!("guard_memory: {name} must be a positive integer, not {text:?}");
            std::process::exit(2);
        }),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let addresses = parse_arg(args.next(), 1_000_000, "ADDRESSES");
    let max_entries = parse_arg(args.next(), 100_000, "MAX_ENTRIES");
    if addresses >= 1 << 24 {
        eprintln!("guard_memory: at most {} addresses fit in 127.0.0.0/8", (1 << 24) - 1);
        std::process::exit(2);
    }

    let settings = GuardSettings {
        cc: Some(CcSettings {
            window_ms: 60_000,
            count: 1_000_000,
            ban_ms: 60_000,
            white_list: IpList::default(),
            black_list: IpList::default(),
            max_entries,
        }),
        limit_req: Some(LimitReqSettings {
            window_ms: 60_000,
            count: 1_000_000,
            mode: LimitReqMode::PathAndQuery,
            max_entries,
        }),
    };
    let uri: Uri = "/api/items?page=2".parse().expect("a valid URI");
    let guards = Guards::default();
    let first = u32::from(Ipv4Addr::new(127, 0, 0, 1));

    let before = resident_kib();
    let started = Instant::now();
    for n in 0..addresses as u32 {
        let client = IpAddr::V4(Ipv4Addr::from(first + n));
        if guards.check(&settings, client, "app.test", &uri).is_err() {
            eprintln!("guard_memory: request from {client} was rejected; the limits are too low");
            std::process::exit(1);
        }
    }
    let fill = started.elapsed();
    let after = resident_kib();

    // Repeated requests from one client: the cost of the common case, an existing entry.
    let repeats = 1_000_000u32;
    let client = IpAddr::V4(Ipv4Addr::from(first));
    let started = Instant::now();
    for _ in 0..repeats {
        let _ = std::hint::black_box(guards.check(&settings, client, "app.test", &uri));
    }
    let repeat = started.elapsed();

    let cc_entries = guards.cc.len();
    let limit_entries = guards.limit_req.len();
    println!("addresses fed:           {addresses}");
    println!("maxEntries:              {max_entries}");
    println!("CC entries kept:         {cc_entries}");
    println!("limitReq entries kept:   {limit_entries}");
    println!("resident before:         {before} KiB");
    println!("resident after:          {after} KiB");
    println!("growth:                  {} KiB", after.saturating_sub(before));
    let kept = (cc_entries + limit_entries).max(1) as f64;
    println!(
        "growth per kept entry:   {:.0} bytes",
        after.saturating_sub(before) as f64 * 1024.0 / kept
    );
    println!(
        "check, new address:      {:.0} ns",
        fill.as_nanos() as f64 / addresses.max(1) as f64
    );
    println!(
        "check, known address:    {:.0} ns",
        repeat.as_nanos() as f64 / f64::from(repeats)
    );
}
