//! A tiny MaxMind DB (`.mmdb`, format 2.0) writer for tests: an IPv4 tree mapping a few
//! networks to `{"country": {"iso_code"}, "continent": {"code"}}`, enough for a GeoIP
//! country lookup. Written here from the published format description, so that no test
//! needs a downloaded database.

use std::net::Ipv4Addr;

#[derive(Clone, Copy)]
enum Rec {
    Empty,
    Node(u32),
    Data(u32),
}

fn control(kind: u8, size: usize, out: &mut Vec<u8>) {
    assert!(size < 29, "test mmdb writer: only short values");
    if kind <= 7 {
        out.push((kind << 5) | size as u8);
    } else {
        out.push(size as u8);
        out.push(kind - 7);
    }
}

fn string(s: &str, out: &mut Vec<u8>) {
    control(2, s.len(), out);
    out.extend_from_slice(s.as_bytes());
}

fn uint(kind: u8, v: u64, out: &mut Vec<u8>) {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    control(kind, 8 - skip, out);
    out.extend_from_slice(&bytes[skip..]);
}

fn map_header(pairs: usize, out: &mut Vec<u8>) {
    control(7, pairs, out);
}

/// Builds an IPv4 MaxMind database: each `(network, prefix, country, continent)` maps the
/// network to that country and continent.
pub fn country_db(entries: &[(Ipv4Addr, u8, &str, &str)]) -> Vec<u8> {
    // Data section: one record per entry.
    let mut data = Vec::new();
    let mut offsets = Vec::new();
    for (_, _, country, continent) in entries {
        offsets.push(data.len() as u32);
        map_header(2, &mut data);
        string("country", &mut data);
        map_header(1, &mut data);
        string("iso_code", &mut data);
        string(country, &mut data);
        string("continent", &mut data);
        map_header(1, &mut data);
        string("code", &mut data);
        string(continent, &mut data);
    }
    // The search tree.
    let mut nodes: Vec<[Rec; 2]> = vec![[Rec::Empty, Rec::Empty]];
    for ((net, prefix, _, _), &offset) in entries.iter().zip(&offsets) {
        let bits = u32::from(*net);
        let mut node = 0usize;
        for depth in 0..*prefix {
            let bit = ((bits >> (31 - depth)) & 1) as usize;
            if depth + 1 == *prefix {
                nodes[node][bit] = Rec::Data(offset);
                break;
            }
            node = match nodes[node][bit] {
                Rec::Node(n) => n as usize,
                _ => {
                    nodes.push([Rec::Empty, Rec::Empty]);
                    let n = nodes.len() - 1;
                    nodes[node][bit] = Rec::Node(n as u32);
                    n
                }
            };
        }
    }
    let node_count = nodes.len() as u32;
    let mut out = Vec::new();
    for n in &nodes {
        for r in n {
            let v = match *r {
                Rec::Empty => node_count,
                Rec::Node(i) => i,
                Rec::Data(off) => node_count + 16 + off,
            };
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
    out.extend_from_slice(&[0u8; 16]);
    out.extend_from_slice(&data);
    // Metadata.
    out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    let mut meta = Vec::new();
    map_header(9, &mut meta);
    string("binary_format_major_version", &mut meta);
    uint(5, 2, &mut meta);
    string("binary_format_minor_version", &mut meta);
    uint(5, 0, &mut meta);
    string("build_epoch", &mut meta);
    uint(9, 1_700_000_000, &mut meta);
    string("database_type", &mut meta);
    string("Test-Country", &mut meta);
    string("description", &mut meta);
    map_header(1, &mut meta);
    string("en", &mut meta);
    string("switchyard test database", &mut meta);
    string("ip_version", &mut meta);
    uint(5, 4, &mut meta);
    string("languages", &mut meta);
    control(11, 1, &mut meta);
    string("en", &mut meta);
    string("node_count", &mut meta);
    uint(6, u64::from(node_count), &mut meta);
    string("record_size", &mut meta);
    uint(5, 32, &mut meta);
    out.extend_from_slice(&meta);
    out
}
