//! Global server load balancing: an authoritative DNS responder for one zone (`[gslb]`)
//! that hands each client the addresses of the site that should serve it.
//!
//! - [`config`]: the `[gslb]` table and its checks.
//! - this module: the compiled zone ([`Gslb`]), the sites' live state ([`SiteLive`], kept by
//!   site name across reloads in [`GslbLive`]), the strategies ([`Gslb::choose`]), the admin
//!   JSON and the metrics.
//! - [`dns`]: one query in, one answer out, on hickory-proto's wire format.
//! - [`server`]: the UDP and TCP sockets and the background service that runs them, the
//!   sites' health checks (the gateway's own probes, [`crate::health::probe`]) and load
//!   polls, following reloads.
//! - [`geo`]: the optional MaxMind database.
//!
//! Sites start healthy; a site with a `health_check` goes down after `fails` failed probes
//! and comes back after `passes` passing ones (counted by the upstreams' own
//! [`BackendState::record_probe`]). The smoothed round trip of the passing probes (EWMA,
//! weight 0.3 for the newest) is what `latency` compares.

pub mod config;
pub mod dns;
pub mod geo;
pub mod server;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::rr::{LowerName, Name};
use ipnet::IpNet;
use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};
use serde_json::json;

use crate::health::{from_tick, tick};
use crate::upstream::BackendState;
use config::{GslbSection, LoadPoll, SiteCheck, Strategy};

/// Live state of one site, kept by name across reloads.
#[derive(Debug, Default)]
pub struct SiteLive {
    /// Health (starts healthy), drain, and the probe counters.
    pub state: BackendState,
    /// Smoothed round trip of passing checks, microseconds (0: none yet).
    rtt_us: AtomicU64,
    /// The last load report (an `f64`'s bits).
    load_bits: AtomicU64,
    /// When it arrived ([`crate::health`] clock tick; 0: never).
    load_at: AtomicU64,
}

impl SiteLive {
    /// Whether the site takes part in answers: healthy and not drained.
    pub fn eligible(&self) -> bool {
        self.state.healthy.load(Ordering::Relaxed) && !self.draining()
    }

    /// Whether the admin API drained it.
    pub fn draining(&self) -> bool {
        self.state.draining.load(Ordering::Relaxed)
    }

    /// The smoothed check round trip, once a check passed.
    pub fn rtt(&self) -> Option<Duration> {
        match self.rtt_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Fold one passing check's round trip into the smoothed value.
    pub fn record_rtt(&self, rtt: Duration) {
        let sample = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = self
            .rtt_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    sample
                } else {
                    ((old as f64) * 0.7 + (sample as f64) * 0.3).max(1.0) as u64
                })
            });
    }

    /// Store a load report received at `at`.
    pub fn record_load(&self, load: f64, at: Instant) {
        self.load_bits.store(load.to_bits(), Ordering::Relaxed);
        self.load_at.store(tick(at), Ordering::Relaxed);
    }

    /// The last load report when it is younger than `max_age` at `now`.
    pub fn load(&self, max_age: Duration, now: Instant) -> Option<f64> {
        let at = from_tick(self.load_at.load(Ordering::Relaxed))?;
        (now.saturating_duration_since(at) <= max_age)
            .then(|| f64::from_bits(self.load_bits.load(Ordering::Relaxed)))
    }

    /// Forget measurements (a site whose check or load poll went away).
    fn forget_load(&self) {
        self.load_at.store(0, Ordering::Relaxed);
    }
}

/// Sockets bound for the responder before the service runs (at start, or by a reload
/// that moves `addr`), handed to it through [`GslbLive`].
#[derive(Debug)]
pub struct Bound {
    /// The address they are bound to.
    pub addr: SocketAddr,
    /// The UDP socket.
    pub udp: std::net::UdpSocket,
    /// The TCP listener.
    pub tcp: std::net::TcpListener,
}

impl Bound {
    /// Bind UDP and TCP on `addr` (non-blocking, ready for tokio). With `reuse_port`
    /// (a `-u` upgrade, while the old process still holds the address) both sockets set
    /// `SO_REUSEPORT`, so the two processes share the address until the old one exits.
    pub fn bind(addr: SocketAddr, reuse_port: bool) -> Result<Self, String> {
        use socket2::{Domain, Protocol, Socket, Type};
        let make = |ty: Type, proto: Protocol, what: &str| -> Result<Socket, String> {
            let err = |e: std::io::Error| format!("gslb: cannot bind {what} {addr}: {e}");
            let s = Socket::new(Domain::for_address(addr), ty, Some(proto)).map_err(err)?;
            if addr.is_ipv6() {
                s.set_only_v6(true).map_err(err)?;
            }
            if ty == Type::STREAM {
                s.set_reuse_address(true).map_err(err)?;
            }
            if reuse_port {
                s.set_reuse_port(true).map_err(err)?;
            }
            s.bind(&addr.into()).map_err(err)?;
            if ty == Type::STREAM {
                s.listen(1024).map_err(err)?;
            }
            s.set_nonblocking(true).map_err(err)?;
            Ok(s)
        };
        let udp = make(Type::DGRAM, Protocol::UDP, "UDP")?;
        let tcp = make(Type::STREAM, Protocol::TCP, "TCP")?;
        Ok(Self {
            addr,
            udp: udp.into(),
            tcp: tcp.into(),
        })
    }
}

/// GSLB state that outlives one configuration: each site's [`SiteLive`] by name, and the
/// sockets bound for the responder's next address.
#[derive(Debug, Default)]
pub struct GslbLive {
    sites: Mutex<HashMap<String, Arc<SiteLive>>>,
    pending: Mutex<Option<Bound>>,
    /// The address the responder serves on now (set by the service).
    serving: Mutex<Option<SocketAddr>>,
    /// Bind with `SO_REUSEPORT` (set for a `-u` upgrade).
    pub reuse_port: std::sync::atomic::AtomicBool,
}

impl GslbLive {
    /// The live state of site `name`, created (healthy) on first use.
    pub fn site(&self, name: &str) -> Arc<SiteLive> {
        let mut map = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(name.to_owned()).or_default().clone()
    }

    /// Bind `addr` now unless the responder already serves there or sockets for it wait:
    /// a start or a reload reports a bind failure as its own error. Returns whether it
    /// bound new sockets.
    pub fn prepare(&self, addr: SocketAddr) -> Result<bool, String> {
        if *self.serving.lock().unwrap_or_else(|e| e.into_inner()) == Some(addr) {
            return Ok(false);
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.as_ref().is_some_and(|b| b.addr == addr) {
            return Ok(false);
        }
        *pending = Some(Bound::bind(addr, self.reuse_port.load(Ordering::Relaxed))?);
        Ok(true)
    }

    /// The sockets bound for `addr`, when [`prepare`](Self::prepare) made them.
    fn take(&self, addr: SocketAddr) -> Option<Bound> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.as_ref().is_some_and(|b| b.addr == addr) {
            pending.take()
        } else {
            None
        }
    }

    fn set_serving(&self, addr: Option<SocketAddr>) {
        *self.serving.lock().unwrap_or_else(|e| e.into_inner()) = addr;
    }
}

/// Address families of answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// A records.
    V4,
    /// AAAA records.
    V6,
}

/// One compiled site.
#[derive(Debug)]
pub struct Site {
    /// Its name.
    pub name: String,
    /// IPv4 addresses of its answers.
    pub v4: Vec<Ipv4Addr>,
    /// IPv6 addresses of its answers.
    pub v6: Vec<Ipv6Addr>,
    /// Geo: the countries it serves (upper case).
    pub countries: Vec<String>,
    /// Geo: the continents it serves (upper case).
    pub continents: Vec<String>,
    /// `weighted`: its weight.
    pub weight: u32,
    /// Its health check.
    pub check: Option<SiteCheck>,
    /// Its load poll.
    pub load: Option<LoadPoll>,
    /// Its live state.
    pub live: Arc<SiteLive>,
}

impl Site {
    fn has(&self, family: Option<Family>) -> bool {
        match family {
            Some(Family::V4) => !self.v4.is_empty(),
            Some(Family::V6) => !self.v6.is_empty(),
            None => true,
        }
    }

    /// Its load report when fresh: younger than three poll intervals.
    pub fn fresh_load(&self, now: Instant) -> Option<f64> {
        let poll = self.load.as_ref()?;
        self.live.load(poll.interval * 3, now)
    }
}

/// One compiled `[[gslb.name]]`.
#[derive(Debug)]
pub struct GslbName {
    /// The name as configured (the metrics label).
    pub label: String,
    /// The absolute name, lowercase, without the trailing dot.
    pub fqdn: String,
    /// The owner name of its records.
    pub owner: Name,
    /// How it picks a site.
    pub strategy: Strategy,
    /// Its sites (indexes into [`Gslb::sites`]), in failover order.
    pub sites: Vec<usize>,
    /// TTL of its answers, seconds.
    pub ttl: u32,
    /// Geo: (network, site index) of its sites' `cidrs`, longest prefix first.
    nets: Vec<(IpNet, usize)>,
    /// Cached `switchyard_gslb_answers_total` children, per site of `sites`.
    answer_counters: Vec<std::sync::OnceLock<IntCounter>>,
    /// Cached `switchyard_gslb_queries_total` children, by (qtype, rcode) label index.
    query_counters: Vec<std::sync::OnceLock<IntCounter>>,
}

/// What a strategy chose for one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// The site (index into [`Gslb::sites`]); `None`: no site has addresses of the family.
    pub site: Option<usize>,
    /// The ECS scope: how many leading bits of the client address the choice depends on.
    pub scope: u8,
    /// No candidate was healthy: chosen as if all were.
    pub fail_open: bool,
}

/// The client a geo answer is for: an address and how many of its bits are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The address (the ECS subnet's, or the query's source).
    pub addr: IpAddr,
    /// Its significant bits (the ECS source prefix, or the whole address).
    pub prefix: u8,
}

/// The compiled `[gslb]` table.
#[derive(Debug)]
pub struct Gslb {
    /// Where the responder listens.
    pub addr: SocketAddr,
    /// The zone, lowercase, without the trailing dot.
    pub zone: String,
    /// The zone's apex.
    pub apex: Name,
    apex_lower: LowerName,
    /// The SOA record's fields: (primary name server, hostmaster, serial).
    pub soa: (Name, Name, u32),
    /// The apex's name servers.
    pub nameservers: Vec<Name>,
    /// Default TTL of answers, seconds.
    pub ttl: u32,
    /// The sites, in configuration order.
    pub sites: Vec<Site>,
    /// The names, in configuration order.
    pub names: Vec<GslbName>,
    lookup: HashMap<LowerName, usize>,
    /// Names that exist only because a configured name is below them.
    empty_non_terminals: HashSet<LowerName>,
    geo: Option<Arc<geo::GeoDb>>,
}

fn ttl_secs(d: Option<&toml::Spanned<crate::config::ConfigDuration>>, default: u32) -> u32 {
    d.map_or(default, |d| {
        u32::try_from(d.get_ref().get().as_secs()).unwrap_or(u32::MAX >> 1)
    })
}

fn dns_name(text: &str) -> Result<Name, String> {
    let absolute = if text.ends_with('.') {
        text.to_owned()
    } else {
        format!("{text}.")
    };
    Name::from_ascii(&absolute).map_err(|e| format!("invalid DNS name `{text}`: {e}"))
}

impl Gslb {
    /// Compile a validated `[gslb]` table; sites take their live state from `live`.
    pub fn build(g: &GslbSection, live: &GslbLive) -> Result<Self, String> {
        let zone = config::normalize_zone(g.zone.get_ref());
        let apex = dns_name(&zone)?;
        let nameservers = match &g.nameservers {
            Some(list) => list
                .get_ref()
                .iter()
                .map(|n| dns_name(n.get_ref()))
                .collect::<Result<Vec<_>, _>>()?,
            None => vec![dns_name(&format!("ns1.{zone}"))?],
        };
        let hostmaster = match &g.hostmaster {
            Some(h) => dns_name(h.get_ref())?,
            None => dns_name(&format!("hostmaster.{zone}"))?,
        };
        // The serial moves on with every configuration (seconds since 1970, as many zones do).
        let serial = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| {
                u32::try_from(d.as_secs() % u64::from(u32::MAX)).unwrap_or(1)
            });
        let geo = g
            .geoip
            .as_ref()
            .map(|p| geo::GeoDb::open(p.get_ref()).map(Arc::new))
            .transpose()
            .map_err(|e| format!("gslb.geoip: {e}"))?;
        let mut sites = Vec::with_capacity(g.site.len());
        let mut cidrs = Vec::with_capacity(g.site.len());
        for s in &g.site {
            let mut v4 = Vec::new();
            let mut v6 = Vec::new();
            for a in s.addrs.get_ref() {
                match a.get_ref().parse::<IpAddr>() {
                    Ok(IpAddr::V4(ip)) => v4.push(ip),
                    Ok(IpAddr::V6(ip)) => v6.push(ip),
                    Err(_) => return Err(format!("site `{}`: bad address", s.name.get_ref())),
                }
            }
            let nets: Vec<IpNet> = s
                .cidrs
                .iter()
                .filter_map(|c| crate::config::parse_cidr(c.get_ref()))
                .map(|n| n.trunc())
                .collect();
            cidrs.push(nets);
            sites.push(Site {
                name: s.name.get_ref().clone(),
                v4,
                v6,
                countries: s.countries.iter().map(|c| c.get_ref().clone()).collect(),
                continents: s.continents.iter().map(|c| c.get_ref().clone()).collect(),
                weight: s.weight.as_ref().map_or(1, |w| *w.get_ref()).max(1),
                check: s
                    .health_check
                    .as_ref()
                    .map(|c| SiteCheck::from_section(c.get_ref()))
                    .transpose()
                    .map_err(|e| format!("site `{}`: {e}", s.name.get_ref()))?,
                load: s
                    .load
                    .as_ref()
                    .map(|l| LoadPoll::from_section(l.get_ref()))
                    .transpose()
                    .map_err(|e| format!("site `{}`: {e}", s.name.get_ref()))?,
                live: live.site(s.name.get_ref()),
            });
        }
        let ttl = ttl_secs(g.ttl.as_ref(), 30);
        let mut names = Vec::with_capacity(g.name.len());
        let mut lookup = HashMap::new();
        let mut empty_non_terminals = HashSet::new();
        let apex_lower = LowerName::new(&apex);
        for (i, n) in g.name.iter().enumerate() {
            let fqdn = config::qualify(n.name.get_ref(), &zone)?;
            let owner = dns_name(&fqdn)?;
            let site_ix: Vec<usize> = n
                .sites
                .get_ref()
                .iter()
                .filter_map(|s| sites.iter().position(|x| &x.name == s.get_ref()))
                .collect();
            let mut nets: Vec<(IpNet, usize)> = site_ix
                .iter()
                .flat_map(|&s| cidrs[s].iter().map(move |n| (*n, s)))
                .collect();
            // Longest prefix first; equal prefixes keep the name's site order.
            nets.sort_by_key(|(n, _)| std::cmp::Reverse(n.prefix_len()));
            let mut parent = owner.base_name();
            while parent.num_labels() > apex.num_labels() {
                empty_non_terminals.insert(LowerName::new(&parent));
                parent = parent.base_name();
            }
            lookup.insert(LowerName::new(&owner), i);
            names.push(GslbName {
                label: n.name.get_ref().clone(),
                fqdn,
                owner,
                strategy: n
                    .strategy
                    .as_ref()
                    .and_then(|s| Strategy::parse(s.get_ref()))
                    .unwrap_or(Strategy::Failover),
                answer_counters: site_ix.iter().map(|_| Default::default()).collect(),
                query_counters: (0..dns::QTYPE_LABELS.len() * dns::RCODE_LABELS.len())
                    .map(|_| Default::default())
                    .collect(),
                sites: site_ix,
                ttl: ttl_secs(n.ttl.as_ref(), ttl),
                nets,
            });
        }
        for name in lookup.keys() {
            empty_non_terminals.remove(name);
        }
        Ok(Self {
            addr: *g.addr.get_ref(),
            zone,
            apex,
            apex_lower,
            soa: (nameservers[0].clone(), hostmaster, serial),
            nameservers,
            ttl,
            sites,
            names,
            lookup,
            empty_non_terminals,
            geo,
        })
    }

    /// The configured name `qname` is, if any.
    pub fn name_index(&self, qname: &LowerName) -> Option<usize> {
        self.lookup.get(qname).copied()
    }

    /// Whether `qname` is the apex or below it.
    pub fn in_zone(&self, qname: &LowerName) -> bool {
        self.apex_lower.zone_of(qname)
    }

    /// Whether `qname` is the apex.
    pub fn is_apex(&self, qname: &LowerName) -> bool {
        *qname == self.apex_lower
    }

    /// Whether `qname` exists only as the parent of configured names.
    pub fn is_empty_non_terminal(&self, qname: &LowerName) -> bool {
        self.empty_non_terminals.contains(qname)
    }

    /// Choose the site that answers name `index` for `client` (geo) in `family` (`None`:
    /// any site with an address), at `now` (load freshness).
    pub fn choose(
        &self,
        index: usize,
        family: Option<Family>,
        client: Option<Client>,
        now: Instant,
    ) -> Choice {
        let Some(name) = self.names.get(index) else {
            return Choice {
                site: None,
                scope: 0,
                fail_open: false,
            };
        };
        // Candidates: the sites with addresses of the family, drained ones left out
        // (unless every one is drained).
        let with_family = || {
            name.sites
                .iter()
                .copied()
                .filter(move |&s| self.sites[s].has(family))
        };
        let mut pool: smallvec_lite::Indexes = with_family()
            .filter(|&s| self.sites[s].live.eligible())
            .collect();
        let mut fail_open = false;
        if pool.is_empty() {
            pool = with_family()
                .filter(|&s| !self.sites[s].live.draining())
                .collect();
            if pool.is_empty() {
                pool = with_family().collect();
            }
            if pool.is_empty() {
                return Choice {
                    site: None,
                    scope: 0,
                    fail_open: false,
                };
            }
            fail_open = true;
        }
        let (site, scope) = match name.strategy {
            Strategy::Failover => (pool.first(), 0),
            Strategy::Geo => self.geo_pick(name, &pool, client),
            Strategy::Latency => {
                // Known round trips first (lowest wins), then the others in list order.
                let best = pool
                    .iter()
                    .copied()
                    .min_by_key(|&s| self.sites[s].live.rtt().unwrap_or(Duration::MAX));
                (best, 0)
            }
            Strategy::Load => {
                let best = pool
                    .iter()
                    .copied()
                    .map(|s| (s, self.sites[s].fresh_load(now)))
                    .min_by(|a, b| match (a.1, b.1) {
                        (Some(x), Some(y)) => x.total_cmp(&y),
                        (Some(_), None) => std::cmp::Ordering::Less,
                        (None, Some(_)) => std::cmp::Ordering::Greater,
                        (None, None) => std::cmp::Ordering::Equal,
                    })
                    .map(|(s, _)| s);
                (best, 0)
            }
            Strategy::Weighted => {
                let total: u64 = pool.iter().map(|&s| u64::from(self.sites[s].weight)).sum();
                let mut r = rand::random_range(0..total.max(1));
                let mut chosen = pool.first();
                for &s in pool.iter() {
                    let w = u64::from(self.sites[s].weight);
                    if r < w {
                        chosen = Some(s);
                        break;
                    }
                    r -= w;
                }
                (chosen, 0)
            }
        };
        Choice {
            site,
            scope,
            fail_open,
        }
    }

    fn geo_pick(
        &self,
        name: &GslbName,
        pool: &smallvec_lite::Indexes,
        client: Option<Client>,
    ) -> (Option<usize>, u8) {
        let Some(client) = client else {
            return (pool.first(), 0);
        };
        for (net, site) in &name.nets {
            if net.contains(&client.addr) && pool.contains(*site) {
                return (Some(*site), net.prefix_len().min(client.prefix));
            }
        }
        if let Some(db) = &self.geo {
            if let Some(found) = db.lookup(client.addr) {
                let scope = found.prefix.min(client.prefix);
                if let Some(country) = &found.country {
                    if let Some(&s) = pool
                        .iter()
                        .find(|&&s| self.sites[s].countries.iter().any(|c| c == country))
                    {
                        return (Some(s), scope);
                    }
                }
                if let Some(continent) = &found.continent {
                    if let Some(&s) = pool
                        .iter()
                        .find(|&&s| self.sites[s].continents.iter().any(|c| c == continent))
                    {
                        return (Some(s), scope);
                    }
                }
            }
        }
        // Matched nothing: the answer still depends on the client's known bits.
        (pool.first(), client.prefix)
    }

    /// Count an answer for name `index` from site `site` (cached metric children).
    pub fn count_answer(&self, metrics: &GslbMetrics, index: usize, site: usize) {
        let Some(name) = self.names.get(index) else {
            return;
        };
        let Some(pos) = name.sites.iter().position(|&s| s == site) else {
            return;
        };
        if let Some(cell) = name.answer_counters.get(pos) {
            cell.get_or_init(|| {
                metrics
                    .answers
                    .with_label_values(&[name.label.as_str(), self.sites[site].name.as_str()])
            })
            .inc();
        }
    }

    /// Count a query for name `index` (cached metric children: no label hashing after the
    /// first query of each type and rcode).
    pub fn count_query(&self, metrics: &GslbMetrics, index: usize, qtype: &str, rcode: &str) {
        let Some(name) = self.names.get(index) else {
            return;
        };
        let q = dns::QTYPE_LABELS.iter().position(|&l| l == qtype);
        let r = dns::RCODE_LABELS.iter().position(|&l| l == rcode);
        let cell = q
            .zip(r)
            .and_then(|(q, r)| name.query_counters.get(q * dns::RCODE_LABELS.len() + r));
        match cell {
            Some(cell) => cell
                .get_or_init(|| {
                    metrics
                        .queries
                        .with_label_values(&[name.label.as_str(), qtype, rcode])
                })
                .inc(),
            None => metrics
                .queries
                .with_label_values(&[name.label.as_str(), qtype, rcode])
                .inc(),
        }
    }

    /// `GET /admin/gslb`.
    pub fn admin_json(&self) -> serde_json::Value {
        let now = Instant::now();
        let sites: Vec<_> = self
            .sites
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "healthy": s.live.state.healthy.load(Ordering::Relaxed),
                    "draining": s.live.draining(),
                    "rtt_ms": s.live.rtt().map(|d| d.as_secs_f64() * 1000.0),
                    "load": s.fresh_load(now),
                    "addrs": s.v4.iter().map(ToString::to_string)
                        .chain(s.v6.iter().map(ToString::to_string)).collect::<Vec<_>>(),
                })
            })
            .collect();
        let names: Vec<_> = self
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let choice = self.choose(i, None, None, now);
                json!({
                    "name": n.fqdn,
                    "strategy": n.strategy.as_str(),
                    "sites": n.sites.iter().map(|&s| self.sites[s].name.as_str()).collect::<Vec<_>>(),
                    "answer": choice.site.map(|s| self.sites[s].name.as_str()),
                    "fail_open": choice.fail_open,
                })
            })
            .collect();
        json!({"zone": self.zone, "addr": self.addr.to_string(), "sites": sites, "names": names})
    }

    /// `POST /admin/gslb/sites/{site}/drain|enable`: `Err` when there is no such site.
    pub fn set_draining(&self, site: &str, draining: bool) -> Result<serde_json::Value, String> {
        let s = self
            .sites
            .iter()
            .find(|s| s.name == site)
            .ok_or_else(|| format!("no gslb site {site}"))?;
        s.live.state.draining.store(draining, Ordering::Relaxed);
        log::info!(
            "gslb: site {site} {}",
            if draining { "drained" } else { "enabled" }
        );
        Ok(json!({"site": site, "draining": draining}))
    }
}

/// A tiny inline list of site indexes (names have few sites): no allocation per query for
/// up to 16 of them.
mod smallvec_lite {
    /// Up to 16 indexes inline, more on the heap.
    #[derive(Debug, Default)]
    pub struct Indexes {
        inline: [usize; 16],
        len: usize,
        more: Vec<usize>,
    }

    impl Indexes {
        /// Whether there are none.
        pub fn is_empty(&self) -> bool {
            self.len == 0 && self.more.is_empty()
        }

        /// The first index.
        pub fn first(&self) -> Option<usize> {
            self.iter().next().copied()
        }

        /// Whether `i` is in the list.
        pub fn contains(&self, i: usize) -> bool {
            self.iter().any(|&x| x == i)
        }

        /// The indexes in order.
        pub fn iter(&self) -> impl Iterator<Item = &usize> {
            self.inline[..self.len].iter().chain(self.more.iter())
        }
    }

    impl FromIterator<usize> for Indexes {
        fn from_iter<T: IntoIterator<Item = usize>>(iter: T) -> Self {
            let mut out = Self::default();
            for i in iter {
                if out.len < out.inline.len() && out.more.is_empty() {
                    out.inline[out.len] = i;
                    out.len += 1;
                } else {
                    out.more.push(i);
                }
            }
            out
        }
    }
}

/// The GSLB metrics, registered in the gateway's registry.
#[derive(Debug, Clone)]
pub struct GslbMetrics {
    /// `switchyard_gslb_queries_total{name, qtype, rcode}`.
    pub queries: IntCounterVec,
    /// `switchyard_gslb_answers_total{name, site}`.
    pub answers: IntCounterVec,
    /// `switchyard_gslb_site_healthy{site}`.
    pub site_healthy: IntGaugeVec,
    /// `switchyard_gslb_fail_open_total{name}`.
    pub fail_open: IntCounterVec,
}

impl GslbMetrics {
    /// Create the metrics and register them in `r`.
    pub fn register(r: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(c.clone())).expect("registered once");
            c
        };
        let site_healthy = IntGaugeVec::new(
            Opts::new(
                "switchyard_gslb_site_healthy",
                "Whether a GSLB site passes its health checks (0/1).",
            ),
            &["site"],
        )
        .expect("valid metric");
        r.register(Box::new(site_healthy.clone()))
            .expect("registered once");
        Self {
            queries: counter(
                "switchyard_gslb_queries_total",
                "DNS queries answered by the GSLB responder.",
                &["name", "qtype", "rcode"],
            ),
            answers: counter(
                "switchyard_gslb_answers_total",
                "GSLB answers, by the site they named.",
                &["name", "site"],
            ),
            site_healthy,
            fail_open: counter(
                "switchyard_gslb_fail_open_total",
                "Answers given as if every site were healthy, because none was.",
                &["name"],
            ),
        }
    }

    /// Read the sites' health into the gauges (before a scrape).
    pub fn refresh(&self, gslb: Option<&Gslb>) {
        self.site_healthy.reset();
        if let Some(g) = gslb {
            for s in &g.sites {
                self.site_healthy
                    .with_label_values(&[s.name.as_str()])
                    .set(i64::from(s.live.state.healthy.load(Ordering::Relaxed)));
            }
            for n in &g.names {
                self.fail_open.with_label_values(&[n.label.as_str()]);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const TEXT: &str = r#"
addr = "127.0.0.1:5353"
zone = "gslb.example.com"
[[site]]
name = "a"
addrs = ["192.0.2.1", "2001:db8::1"]
cidrs = ["10.0.0.0/8", "10.1.0.0/16"]
[[site]]
name = "b"
addrs = ["192.0.2.2"]
cidrs = ["10.1.2.0/24"]
weight = 3
load = { url = "http://127.0.0.1:9/load", interval = "1s" }
[[site]]
name = "c"
addrs = ["192.0.2.3"]
load = { url = "http://127.0.0.1:9/load", interval = "1s" }
[[name]]
name = "f"
sites = ["a", "b", "c"]
[[name]]
name = "g"
strategy = "geo"
sites = ["c", "a", "b"]
[[name]]
name = "l"
strategy = "latency"
sites = ["a", "b", "c"]
[[name]]
name = "ld"
strategy = "load"
sites = ["a", "b", "c"]
[[name]]
name = "w"
strategy = "weighted"
sites = ["a", "b"]
[[name]]
name = "x.y"
sites = ["b"]
"#;

    pub(crate) fn build(text: &str) -> Gslb {
        let g: GslbSection = toml::from_str(text).unwrap();
        assert!(
            config::validate(&g).is_empty(),
            "{:?}",
            config::validate(&g)
        );
        Gslb::build(&g, &GslbLive::default()).unwrap()
    }

    fn pick(g: &Gslb, name: &str, family: Option<Family>, client: Option<&str>) -> Choice {
        let i = g.names.iter().position(|n| n.label == name).unwrap();
        let client = client.map(|c| {
            let (addr, prefix) = c.split_once('/').unwrap();
            Client {
                addr: addr.parse().unwrap(),
                prefix: prefix.parse().unwrap(),
            }
        });
        g.choose(i, family, client, Instant::now())
    }

    fn site(g: &Gslb, c: Choice) -> &str {
        g.sites[c.site.unwrap()].name.as_str()
    }

    #[test]
    fn failover_drain_and_fail_open() {
        let g = build(TEXT);
        assert_eq!(site(&g, pick(&g, "f", Some(Family::V4), None)), "a");
        g.sites[0]
            .live
            .state
            .healthy
            .store(false, Ordering::Relaxed);
        assert_eq!(site(&g, pick(&g, "f", Some(Family::V4), None)), "b");
        g.set_draining("b", true).unwrap();
        assert_eq!(site(&g, pick(&g, "f", Some(Family::V4), None)), "c");
        g.sites[2]
            .live
            .state
            .healthy
            .store(false, Ordering::Relaxed);
        // Nothing eligible: as if all were healthy, drained ones still left out.
        let c = pick(&g, "f", Some(Family::V4), None);
        assert!(c.fail_open);
        assert_eq!(site(&g, c), "a");
        assert!(g.set_draining("nope", true).is_err());
        // Only a has IPv6: it answers AAAA (fail open: it is down); no IPv6 site: no data.
        assert_eq!(site(&g, pick(&g, "f", Some(Family::V6), None)), "a");
        assert_eq!(pick(&g, "x.y", Some(Family::V6), None).site, None);
    }

    #[test]
    fn geo_longest_prefix_and_scope() {
        let g = build(TEXT);
        let c = pick(&g, "g", Some(Family::V4), Some("10.1.2.0/24"));
        assert_eq!((site(&g, c), c.scope), ("b", 24));
        let c = pick(&g, "g", Some(Family::V4), Some("10.1.9.0/24"));
        assert_eq!((site(&g, c), c.scope), ("a", 16));
        let c = pick(&g, "g", Some(Family::V4), Some("10.9.0.0/20"));
        assert_eq!((site(&g, c), c.scope), ("a", 8));
        // The client's known bits bound the scope.
        let c = pick(&g, "g", Some(Family::V4), Some("10.1.2.0/12"));
        assert_eq!(c.scope, 12);
        // No match: failover order, scope = the client's prefix.
        let c = pick(&g, "g", Some(Family::V4), Some("172.16.0.0/24"));
        assert_eq!((site(&g, c), c.scope), ("c", 24));
        // A matched site that is down: the next match, then failover order.
        g.sites[1]
            .live
            .state
            .healthy
            .store(false, Ordering::Relaxed);
        let c = pick(&g, "g", Some(Family::V4), Some("10.1.2.0/24"));
        assert_eq!((site(&g, c), c.scope), ("a", 16));
        // Other strategies ignore the client: scope 0.
        assert_eq!(
            pick(&g, "f", Some(Family::V4), Some("10.1.2.0/24")).scope,
            0
        );
    }

    #[test]
    fn latency_and_load() {
        let g = build(TEXT);
        // No round trip known: list order.
        assert_eq!(site(&g, pick(&g, "l", None, None)), "a");
        g.sites[1].live.record_rtt(Duration::from_millis(5));
        assert_eq!(
            site(&g, pick(&g, "l", None, None)),
            "b",
            "known before unknown"
        );
        g.sites[0].live.record_rtt(Duration::from_millis(2));
        assert_eq!(site(&g, pick(&g, "l", None, None)), "a");
        // EWMA: one slow sample moves a's 2 ms by 30 % of the difference.
        g.sites[0].live.record_rtt(Duration::from_millis(12));
        assert_eq!(g.sites[0].live.rtt(), Some(Duration::from_millis(5)));

        let now = Instant::now();
        let ld = g.names.iter().position(|n| n.label == "ld").unwrap();
        let at = |later: u64| {
            let c = g.choose(ld, None, None, now + Duration::from_millis(later));
            g.sites[c.site.unwrap()].name.clone()
        };
        g.sites[1].live.record_load(0.7, now);
        g.sites[2].live.record_load(0.2, now);
        assert_eq!(at(0), "c");
        assert_eq!(at(2900), "c");
        // Older than three intervals: unknown, ranked after known ones (a has no poll).
        g.sites[1]
            .live
            .record_load(0.9, now + Duration::from_millis(1000));
        assert_eq!(at(3100), "b");
        assert_eq!(at(4100), "a", "no fresh report at all: list order");
    }

    #[test]
    fn weighted_in_proportion() {
        let g = build(TEXT);
        let n = 20_000;
        let b = (0..n)
            .filter(|_| site(&g, pick(&g, "w", None, None)) == "b")
            .count();
        let share = b as f64 / n as f64;
        assert!((0.72..0.78).contains(&share), "{share}");
        g.sites[1]
            .live
            .state
            .healthy
            .store(false, Ordering::Relaxed);
        assert!((0..100).all(|_| site(&g, pick(&g, "w", None, None)) == "a"));
    }

    #[test]
    fn admin_json_shape() {
        let g = build(TEXT);
        let v = g.admin_json();
        assert_eq!(v["sites"][0]["name"], "a");
        assert_eq!(v["sites"][0]["healthy"], true);
        assert_eq!(v["sites"][0]["draining"], false);
        assert!(v["sites"][0]["rtt_ms"].is_null() && v["sites"][0]["load"].is_null());
        assert_eq!(v["names"][0]["name"], "f.gslb.example.com");
        assert_eq!(v["names"][0]["strategy"], "failover");
        assert_eq!(v["names"][0]["answer"], "a");
        // x.y makes y an empty non-terminal.
        let y = LowerName::new(&Name::from_ascii("y.gslb.example.com.").unwrap());
        assert!(g.is_empty_non_terminal(&y));
    }
}
