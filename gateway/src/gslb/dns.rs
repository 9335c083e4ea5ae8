//! One DNS query in, one answer out: parsing and writing go through hickory-proto, so no
//! wire format is written by hand here.
//!
//! - Datagrams shorter than a header, or that are responses, are dropped; a query whose
//!   header parses but whose body does not gets FORMERR.
//! - Opcodes other than QUERY: NOTIMP. Not exactly one question: FORMERR. EDNS versions
//!   other than 0: BADVERS.
//! - A name outside the zone: REFUSED. The apex: SOA and NS. A configured name: A / AAAA
//!   (ANY: both) from the site its strategy chooses; other types NODATA. A name of the zone
//!   not configured: NXDOMAIN; its empty non-terminals: NODATA. NXDOMAIN and NODATA carry
//!   the SOA in the authority section. Every answer in the zone is authoritative (AA).
//! - EDNS: the answer carries an OPT record (payload [`OUR_PAYLOAD`]) when the query did;
//!   an EDNS Client Subnet option is the client for `geo`, and is echoed with the scope.
//! - Over UDP an answer larger than the client's size (512 without EDNS) is sent with TC
//!   set, the question and OPT only; the client asks again over TCP.

use std::net::IpAddr;
use std::time::Instant;

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{DNSClass, LowerName, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use super::{Client, Family, Gslb, GslbMetrics};

/// The UDP payload size the responder advertises (the DNS flag day 2020 value).
pub const OUR_PAYLOAD: u16 = 1232;

/// How a query arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP: answers are bounded by the client's payload size.
    Udp,
    /// TCP: answers up to 65535 bytes.
    Tcp,
}

/// Every `qtype` label value.
pub const QTYPE_LABELS: [&str; 16] = [
    "A", "AAAA", "SOA", "NS", "ANY", "CNAME", "MX", "TXT", "SRV", "PTR", "CAA", "HTTPS", "SVCB",
    "DS", "DNSKEY", "OTHER",
];

/// Every `rcode` label value.
pub const RCODE_LABELS: [&str; 8] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS", "OTHER",
];

/// The `qtype` label of a query type (a bounded set: anything else is `OTHER`).
fn qtype_label(t: RecordType) -> &'static str {
    match t {
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        RecordType::SOA => "SOA",
        RecordType::NS => "NS",
        RecordType::ANY => "ANY",
        RecordType::CNAME => "CNAME",
        RecordType::MX => "MX",
        RecordType::TXT => "TXT",
        RecordType::SRV => "SRV",
        RecordType::PTR => "PTR",
        RecordType::CAA => "CAA",
        RecordType::HTTPS => "HTTPS",
        RecordType::SVCB => "SVCB",
        RecordType::DS => "DS",
        RecordType::DNSKEY => "DNSKEY",
        _ => "OTHER",
    }
}

fn rcode_label(r: ResponseCode) -> &'static str {
    match r {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::BADVERS => "BADVERS",
        _ => "OTHER",
    }
}

/// Answer one query from `source`; `None`: drop it.
pub fn answer(
    gslb: &Gslb,
    metrics: &GslbMetrics,
    query: &[u8],
    source: IpAddr,
    transport: Transport,
) -> Option<Vec<u8>> {
    // Not even a header: drop. A response: drop (never answer answers).
    let header = Header::read(&mut BinDecoder::new(query)).ok()?;
    if header.message_type() != MessageType::Query {
        return None;
    }
    let request = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => {
            metrics
                .queries
                .with_label_values(&["none", "OTHER", "FORMERR"])
                .inc();
            return error_only(&header, ResponseCode::FormErr);
        }
    };
    let mut out = Answer::default();
    let response = respond(gslb, metrics, &request, source, &mut out);
    let rcode = rcode_label(response.response_code());
    match out.name {
        Some(index) => gslb.count_query(metrics, index, out.qtype, rcode),
        None => metrics
            .queries
            .with_label_values(&["none", out.qtype, rcode])
            .inc(),
    }
    finish(response, &request, transport)
}

/// What [`respond`] found out for the metrics.
struct Answer {
    name: Option<usize>,
    qtype: &'static str,
}

impl Default for Answer {
    fn default() -> Self {
        Self {
            name: None,
            qtype: "OTHER",
        }
    }
}

/// A bare answer to a query whose body did not parse: its id and opcode, no question.
fn error_only(header: &Header, rcode: ResponseCode) -> Option<Vec<u8>> {
    let mut m = Message::new();
    m.set_id(header.id())
        .set_message_type(MessageType::Response)
        .set_op_code(header.op_code())
        .set_recursion_desired(header.recursion_desired())
        .set_response_code(rcode);
    m.to_vec().ok()
}

fn base_response(request: &Message) -> Message {
    let mut m = Message::new();
    m.set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_checking_disabled(request.checking_disabled());
    for q in request.queries() {
        m.add_query(q.clone());
    }
    m
}

fn soa_record(gslb: &Gslb) -> Record {
    let (mname, rname, serial) = &gslb.soa;
    let soa = SOA::new(
        mname.clone(),
        rname.clone(),
        *serial,
        3600,
        600,
        86400,
        gslb.ttl,
    );
    Record::from_rdata(gslb.apex.clone(), gslb.ttl, RData::SOA(soa))
}

fn respond(
    gslb: &Gslb,
    metrics: &GslbMetrics,
    request: &Message,
    source: IpAddr,
    out: &mut Answer,
) -> Message {
    let mut m = base_response(request);
    if request.op_code() != OpCode::Query {
        m.set_response_code(ResponseCode::NotImp);
        return m;
    }
    let [query] = request.queries() else {
        m.set_response_code(ResponseCode::FormErr);
        return m;
    };
    out.qtype = qtype_label(query.query_type());
    if let Some(edns) = request.extensions() {
        if edns.version() != 0 {
            m.set_response_code(ResponseCode::BADVERS);
            return m;
        }
    }
    let qname = LowerName::new(query.name());
    if !gslb.in_zone(&qname) || !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY) {
        m.set_response_code(ResponseCode::Refused);
        return m;
    }
    m.set_authoritative(true);
    let qtype = query.query_type();
    let is_apex = gslb.is_apex(&qname);
    let mut any = false;
    if is_apex {
        if matches!(qtype, RecordType::SOA | RecordType::ANY) {
            m.add_answer(soa_record(gslb));
            any = true;
        }
        if matches!(qtype, RecordType::NS | RecordType::ANY) {
            for ns in &gslb.nameservers {
                m.add_answer(Record::from_rdata(
                    gslb.apex.clone(),
                    gslb.ttl,
                    RData::NS(NS(ns.clone())),
                ));
            }
            any = true;
        }
    }
    let client = client_of(request);
    let mut scope = 0u8;
    match gslb.name_index(&qname) {
        Some(index) => {
            let name = &gslb.names[index];
            out.name = Some(index);
            let family = match qtype {
                RecordType::A => Some(Some(Family::V4)),
                RecordType::AAAA => Some(Some(Family::V6)),
                RecordType::ANY => Some(None),
                _ => None,
            };
            if let Some(family) = family {
                let choice = gslb.choose(
                    index,
                    family,
                    Some(client.and_then(|(c, _)| c).unwrap_or(Client {
                        addr: source,
                        prefix: if source.is_ipv4() { 32 } else { 128 },
                    })),
                    Instant::now(),
                );
                // An ECS /0 gets scope 0 whatever the answer depended on.
                scope = match client {
                    Some((None, _)) => 0,
                    _ => choice.scope,
                };
                if choice.fail_open {
                    metrics
                        .fail_open
                        .with_label_values(&[name.label.as_str()])
                        .inc();
                }
                if let Some(site) = choice.site {
                    let s = &gslb.sites[site];
                    if family != Some(Family::V6) {
                        for ip in &s.v4 {
                            m.add_answer(Record::from_rdata(
                                name.owner.clone(),
                                name.ttl,
                                RData::A(A(*ip)),
                            ));
                        }
                    }
                    if family != Some(Family::V4) {
                        for ip in &s.v6 {
                            m.add_answer(Record::from_rdata(
                                name.owner.clone(),
                                name.ttl,
                                RData::AAAA(AAAA(*ip)),
                            ));
                        }
                    }
                    gslb.count_answer(metrics, index, site);
                    any = true;
                }
            }
        }
        None if !is_apex && !gslb.is_empty_non_terminal(&qname) => {
            m.set_response_code(ResponseCode::NXDomain);
            m.add_name_server(soa_record(gslb));
            echo_edns(&mut m, request, client.map(|(_, cs)| (cs, 0)));
            return m;
        }
        None => {}
    }
    if !any {
        // NODATA.
        m.add_name_server(soa_record(gslb));
    }
    echo_edns(&mut m, request, client.map(|(_, cs)| (cs, scope)));
    m
}

/// The client named by an ECS option of the query, with the option itself.
fn client_of(request: &Message) -> Option<(Option<Client>, ClientSubnet)> {
    let edns = request.extensions().as_ref()?;
    let Some(EdnsOption::Subnet(cs)) = edns.options().get(EdnsCode::Subnet) else {
        return None;
    };
    let max = if cs.addr().is_ipv4() { 32 } else { 128 };
    let prefix = cs.source_prefix().min(max);
    // Bits past the source prefix carry nothing (RFC 7871 says they must be zero).
    let addr = ipnet::IpNet::new(cs.addr(), prefix).map_or(cs.addr(), |n| n.network());
    // A source prefix of 0 means "do not use my address": the query's source is used.
    let client = (prefix > 0).then_some(Client { addr, prefix });
    Some((client, *cs))
}

/// Put an OPT record on the answer when the query had one, with the ECS option echoed
/// (same family, source prefix and address; the scope given).
fn echo_edns(m: &mut Message, request: &Message, ecs: Option<(ClientSubnet, u8)>) {
    if request.extensions().is_none() {
        return;
    }
    let mut edns = Edns::new();
    edns.set_max_payload(OUR_PAYLOAD);
    edns.set_version(0);
    if let Some((cs, scope)) = ecs {
        let echoed = ClientSubnet::new(cs.addr(), cs.source_prefix(), scope);
        edns.options_mut().insert(EdnsOption::Subnet(echoed));
    }
    m.set_edns(edns);
}

/// Serialise, truncating for UDP past the client's size.
fn finish(mut response: Message, request: &Message, transport: Transport) -> Option<Vec<u8>> {
    if response.extensions().is_none() && request.extensions().is_some() {
        echo_edns(&mut response, request, None);
    }
    let bytes = response.to_vec().ok()?;
    let limit = match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp => request
            .extensions()
            .as_ref()
            .map_or(512, |e| usize::from(e.max_payload().max(512))),
    };
    if bytes.len() <= limit {
        return Some(bytes);
    }
    // Too large: the header (TC), the question and the OPT record only.
    let mut t = base_response(request);
    t.set_response_code(response.response_code())
        .set_authoritative(response.authoritative())
        .set_truncated(true);
    if let Some(edns) = response.extensions().clone() {
        t.set_edns(edns);
    }
    t.to_vec().ok()
}

/// A query message for `name`/`qtype` (used by tests and tools).
pub fn query(id: u16, name: &str, qtype: RecordType) -> Option<Message> {
    let name = hickory_proto::rr::Name::from_ascii(name).ok()?;
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .add_query(Query::query(name, qtype));
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Name;

    fn gslb() -> (Gslb, GslbMetrics) {
        (
            super::super::tests::build(super::super::tests::TEXT),
            GslbMetrics::register(&prometheus::Registry::new()),
        )
    }

    fn ask(g: &(Gslb, GslbMetrics), m: &Message, transport: Transport) -> Message {
        let bytes = answer(
            &g.0,
            &g.1,
            &m.to_vec().unwrap(),
            "127.0.0.1".parse().unwrap(),
            transport,
        )
        .expect("an answer");
        Message::from_vec(&bytes).unwrap()
    }

    #[test]
    fn rcodes() {
        let g = gslb();
        let q = |name: &str, t| query(7, name, t).unwrap();
        let r = ask(&g, &q("F.gslb.example.com.", RecordType::A), Transport::Udp);
        assert_eq!(r.response_code(), ResponseCode::NoError);
        assert!(r.authoritative() && r.answers().len() == 1);
        assert_eq!(r.id(), 7);
        let r = ask(&g, &q("other.test.", RecordType::A), Transport::Udp);
        assert_eq!(r.response_code(), ResponseCode::Refused);
        assert!(!r.authoritative());
        let r = ask(
            &g,
            &q("zz.gslb.example.com.", RecordType::A),
            Transport::Udp,
        );
        assert_eq!(r.response_code(), ResponseCode::NXDomain);
        assert_eq!(r.name_servers().len(), 1);
        // Two questions: FORMERR. Another opcode: NOTIMP. EDNS version 1: BADVERS.
        let mut two = q("f.gslb.example.com.", RecordType::A);
        two.add_query(Query::query(
            Name::from_ascii("l.gslb.example.com.").unwrap(),
            RecordType::A,
        ));
        assert_eq!(
            ask(&g, &two, Transport::Udp).response_code(),
            ResponseCode::FormErr
        );
        let mut notify = q("f.gslb.example.com.", RecordType::A);
        notify.set_op_code(OpCode::Notify);
        assert_eq!(
            ask(&g, &notify, Transport::Udp).response_code(),
            ResponseCode::NotImp
        );
        let mut v1 = q("f.gslb.example.com.", RecordType::A);
        let mut edns = Edns::new();
        edns.set_version(1);
        v1.set_edns(edns);
        let r = ask(&g, &v1, Transport::Udp);
        // BADVERS is 16 (hickory reads 16 back as its synonym BADSIG).
        assert_eq!(u16::from(r.response_code()), 16);
        // Responses and short datagrams are dropped.
        let mut resp = q("f.gslb.example.com.", RecordType::A);
        resp.set_message_type(MessageType::Response);
        let ip = "127.0.0.1".parse().unwrap();
        assert!(answer(&g.0, &g.1, &resp.to_vec().unwrap(), ip, Transport::Udp).is_none());
        assert!(answer(&g.0, &g.1, &[1, 2, 3], ip, Transport::Udp).is_none());
        assert_eq!(
            g.1.queries
                .with_label_values(&["none", "A", "REFUSED"])
                .get(),
            1
        );
        assert_eq!(g.1.answers.with_label_values(&["f", "a"]).get(), 1);
    }

    #[test]
    fn ecs_is_echoed_with_the_scope() {
        let g = gslb();
        let mut m = query(9, "g.gslb.example.com.", RecordType::A).unwrap();
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        let addr: IpAddr = "10.1.2.0".parse().unwrap();
        edns.options_mut()
            .insert(EdnsOption::Subnet(ClientSubnet::new(addr, 24, 0)));
        m.set_edns(edns);
        let r = ask(&g, &m, Transport::Udp);
        let Some(EdnsOption::Subnet(cs)) = r
            .extensions()
            .as_ref()
            .and_then(|e| e.options().get(EdnsCode::Subnet))
        else {
            panic!("no ECS echoed: {r:?}");
        };
        assert_eq!(
            (cs.addr(), cs.source_prefix(), cs.scope_prefix()),
            (addr, 24, 24)
        );
        assert!(matches!(r.answers()[0].data(), RData::A(a) if a.0.to_string() == "192.0.2.2"));
        // A /0 means "not my address": the source (127.0.0.1, no match) is used, scope 0.
        // Bits past the source prefix are ignored.
        let ask_ecs = |ip: &str, prefix: u8| {
            let mut m = query(9, "g.gslb.example.com.", RecordType::A).unwrap();
            let mut edns = Edns::new();
            edns.options_mut()
                .insert(EdnsOption::Subnet(ClientSubnet::new(
                    ip.parse().unwrap(),
                    prefix,
                    0,
                )));
            m.set_edns(edns);
            let r = ask(&g, &m, Transport::Udp);
            let scope = match r
                .extensions()
                .as_ref()
                .and_then(|e| e.options().get(EdnsCode::Subnet))
            {
                Some(EdnsOption::Subnet(cs)) => cs.scope_prefix(),
                _ => panic!("no ECS echoed"),
            };
            let a = match r.answers()[0].data() {
                RData::A(a) => a.0.to_string(),
                _ => panic!("not an A"),
            };
            (a, scope)
        };
        assert_eq!(ask_ecs("0.0.0.0", 0), ("192.0.2.3".to_owned(), 0));
        assert_eq!(ask_ecs("10.9.9.9", 8), ("192.0.2.1".to_owned(), 8));
    }
}
