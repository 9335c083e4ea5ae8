//! The optional MaxMind database (`gslb.geoip`): an address's country and continent, with
//! the prefix length of the network the database says they hold for (the ECS scope).

use std::net::IpAddr;

/// What the database knows about an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// ISO 3166 country code (upper case).
    pub country: Option<String>,
    /// Continent code (upper case).
    pub continent: Option<String>,
    /// Prefix length of the network the record covers.
    pub prefix: u8,
}

/// A MaxMind database (GeoLite2-Country, GeoIP2-City, or any with `country.iso_code` /
/// `continent.code`), read whole into memory.
pub struct GeoDb {
    reader: maxminddb::Reader<Vec<u8>>,
}

impl std::fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoDb")
            .field("type", &self.reader.metadata.database_type)
            .finish()
    }
}

#[derive(serde::Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    country: Option<Code<'a>>,
    #[serde(borrow)]
    continent: Option<Code<'a>>,
}

#[derive(serde::Deserialize)]
struct Code<'a> {
    iso_code: Option<&'a str>,
    code: Option<&'a str>,
}

impl GeoDb {
    /// Open and check the database at `path`.
    pub fn open(path: &str) -> Result<Self, String> {
        let reader = maxminddb::Reader::open_readfile(path)
            .map_err(|e| format!("not a readable MaxMind database: {e}"))?;
        Ok(Self { reader })
    }

    /// What the database says about `ip`; `None` when it has no record for it.
    pub fn lookup(&self, ip: IpAddr) -> Option<Found> {
        let ip = match ip {
            IpAddr::V6(v6) if self.reader.metadata.ip_version == 4 => {
                IpAddr::V4(v6.to_ipv4_mapped()?)
            }
            other => other,
        };
        let (record, prefix) = self.reader.lookup_prefix::<Record<'_>>(ip).ok()?;
        let record = record?;
        let upper = |s: Option<&str>| s.map(str::to_ascii_uppercase);
        Some(Found {
            country: upper(record.country.and_then(|c| c.iso_code)),
            continent: upper(record.continent.and_then(|c| c.code)),
            prefix: u8::try_from(prefix).unwrap_or(128),
        })
    }
}
