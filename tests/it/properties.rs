//! Property tests: the URL check agrees with the address rules for every IPv4 and IPv6
//! address however it is spelled, and webhook validation never panics and accepts only
//! what its rules allow.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use mosend_webhooks::domain::address::{forbidden_reason, AllowList};
use mosend_webhooks::domain::webhook::{check_header, parse_description, parse_name, WebhookUrl};
use proptest::prelude::*;

fn spellings(ip: Ipv4Addr) -> Vec<String> {
    let n = u32::from(ip);
    let o = ip.octets();
    vec![
        ip.to_string(),
        n.to_string(),
        format!("0x{n:x}"),
        format!("0{n:o}"),
        format!("{}.{}.{}", o[0], o[1], u16::from_be_bytes([o[2], o[3]])),
        format!("{}.{}", o[0], n & 0x00ff_ffff),
        format!("0x{:x}.0x{:x}.0x{:x}.0x{:x}", o[0], o[1], o[2], o[3]),
        format!("0{:o}.0{:o}.0{:o}.0{:o}", o[0], o[1], o[2], o[3]),
        format!("{ip}."),
        format!("[::ffff:{ip}]"),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_spelling_of_an_ipv4_address_is_judged_like_the_address(n in any::<u32>()) {
        let ip = Ipv4Addr::from(n);
        let forbidden = forbidden_reason(IpAddr::V4(ip)).is_some();
        for host in spellings(ip) {
            let url = format!("http://{host}/hook");
            let accepted = WebhookUrl::parse(&url, &AllowList::default()).is_ok();
            prop_assert_eq!(accepted, !forbidden, "{} ({})", url, ip);
        }
    }

    #[test]
    fn ipv6_literals_are_judged_like_the_address(segments in any::<[u16; 8]>()) {
        let ip = Ipv6Addr::from(segments);
        let forbidden = forbidden_reason(IpAddr::V6(ip)).is_some();
        let url = format!("http://[{ip}]/");
        prop_assert_eq!(WebhookUrl::parse(&url, &AllowList::default()).is_ok(), !forbidden, "{}", url);
    }

    #[test]
    fn the_allow_list_admits_exactly_its_networks(n in any::<u32>(), prefix in 8u8..=32) {
        let ip = Ipv4Addr::from(n);
        let allow = AllowList::parse(&format!("{ip}/{prefix}")).unwrap();
        let net: ipnet::Ipv4Net = format!("{ip}/{prefix}").parse().unwrap();
        let inside = net.network();
        let url = format!("http://{inside}/");
        prop_assert!(WebhookUrl::parse(&url, &allow).is_ok(), "{}", url);
    }

    #[test]
    fn arbitrary_urls_never_panic_and_accepted_ones_are_http_without_credentials(s in ".{0,300}") {
        if let Ok(url) = WebhookUrl::parse(&s, &AllowList::default()) {
            let u = url.as_url();
            prop_assert!(matches!(u.scheme(), "http" | "https"));
            prop_assert!(u.username().is_empty() && u.password().is_none());
            prop_assert!(u.as_str().len() <= 2048);
        }
    }

    #[test]
    fn names_descriptions_and_headers_never_panic_and_respect_their_limits(s in "\\\\PC{0,600}", v in ".{0,1100}") {
        if let Ok(name) = parse_name(&s) {
            prop_assert!(!name.is_empty() && name.chars().count() <= 100);
            prop_assert!(!name.chars().any(char::is_control));
        }
        if let Ok(d) = parse_description(&s) {
            prop_assert!(d.chars().count() <= 500);
        }
        if check_header(&s, &v).is_ok() {
            prop_assert!(s.len() <= 64 && v.len() <= 1024);
            prop_assert!(!v.contains('\r') && !v.contains('\n'));
        }
    }
}
