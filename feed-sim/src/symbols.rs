//! The simulated universe: symbol names, price and size precision, opening prices.
//!
//! The first symbols are real-looking pairs in order of activity (`BTC-USD` is rank 1); larger
//! universes continue with generated four-letter codes (`QAAA-USD`, `QAAB-USD`, …) that skip any
//! curated name, so names are unique by construction.
//!
//! Precision follows one rule for every symbol, from the opening price `p`:
//! - `px_scale = 5 - floor(log10 p)`, clamped to 2..=8: one price tick is 1e-6..1e-5 of the
//!   price (BTC at 64 000 is clamped to 2 decimals, i.e. a tick of 0.01);
//! - `qty_scale = floor(log10 p) + 4`, clamped to 2..=8: the smallest size step is worth
//!   1e-4..1e-3 USD (8 decimals for BTC, 3 for DOGE).
//!
//! Everything here is integer arithmetic on mantissas except the one log-uniform draw of a
//! generated symbol's opening price.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tickfan_proto::decimal::parse_decimal;
use tickfan_proto::{Symbol, SymbolTable};

/// Curated pairs, most active first, with a plausible opening price in USD.
const CURATED: &[(&str, &str)] = &[
    ("BTC-USD", "64250"),
    ("ETH-USD", "3201.15"),
    ("SOL-USD", "151.42"),
    ("XRP-USD", "0.5231"),
    ("DOGE-USD", "0.1542"),
    ("ADA-USD", "0.4521"),
    ("AVAX-USD", "35.12"),
    ("LINK-USD", "14.87"),
    ("DOT-USD", "7.234"),
    ("LTC-USD", "84.21"),
    ("BCH-USD", "478.30"),
    ("TRX-USD", "0.1214"),
    ("MATIC-USD", "0.7112"),
    ("UNI-USD", "9.841"),
    ("ATOM-USD", "8.912"),
    ("XLM-USD", "0.1105"),
    ("NEAR-USD", "6.234"),
    ("APT-USD", "8.45"),
    ("ARB-USD", "1.123"),
    ("OP-USD", "2.412"),
    ("FIL-USD", "5.621"),
    ("ICP-USD", "12.34"),
    ("HBAR-USD", "0.0921"),
    ("ETC-USD", "27.45"),
    ("INJ-USD", "28.91"),
    ("SUI-USD", "1.0523"),
    ("AAVE-USD", "98.42"),
    ("MKR-USD", "2841"),
    ("RNDR-USD", "7.812"),
    ("GRT-USD", "0.2712"),
    ("ALGO-USD", "0.1823"),
    ("SEI-USD", "0.5121"),
    ("TIA-USD", "9.87"),
    ("STX-USD", "2.012"),
    ("IMX-USD", "2.134"),
    ("LDO-USD", "2.201"),
    ("CRV-USD", "0.4812"),
    ("SAND-USD", "0.4523"),
    ("MANA-USD", "0.4712"),
    ("AXS-USD", "7.21"),
    ("FET-USD", "1.521"),
    ("EGLD-USD", "41.2"),
    ("XTZ-USD", "0.9823"),
    ("EOS-USD", "0.8123"),
    ("FLOW-USD", "0.8912"),
    ("CHZ-USD", "0.1123"),
    ("COMP-USD", "56.7"),
    ("SNX-USD", "3.012"),
    ("ZEC-USD", "24.5"),
    ("DASH-USD", "29.8"),
    ("ENS-USD", "18.4"),
    ("1INCH-USD", "0.4123"),
    ("KSM-USD", "30.1"),
    ("YFI-USD", "7200"),
];

/// Decimal places of the fixed-point prices of the universe's reference table.
const REF_SCALE: u8 = 8;
/// Opening prices of generated symbols are log-uniform in this range (USD).
const GENERATED_PRICE_RANGE: (f64, f64) = (0.01, 2000.0);
/// Nominal USD value of one size unit: level and trade sizes are drawn as multiples of it.
const SIZE_UNIT_USD: i128 = 100;
/// Salt of the RNG stream that draws generated symbols' opening prices.
const UNIVERSE_SALT: u64 = 0xA076_1D64_78BD_642F;

/// What the market model needs to know of a symbol beyond its wire [`Symbol`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SymbolSpec {
    /// Opening mid price, as a mantissa in the symbol's `px_scale`.
    pub mid0: i64,
    /// Size mantissa worth about `SIZE_UNIT_USD` at the opening price (at least 1).
    pub size_unit: i64,
}

/// Builds the first `n` symbols of the universe of `seed`. Symbol `i` is the same whatever `n`.
pub(crate) fn universe(n: usize, seed: u64) -> (SymbolTable, Vec<SymbolSpec>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ UNIVERSE_SALT);
    let mut codes = generated_codes();
    let mut symbols = Vec::with_capacity(n);
    let mut specs = Vec::with_capacity(n);
    for i in 0..n {
        let (name, price_ref) = match CURATED.get(i) {
            Some(&(name, price)) => (
                name.to_string(),
                parse_decimal(price, REF_SCALE).expect("curated prices are valid decimals"),
            ),
            None => {
                let code = codes.next().expect("enough generated codes for MAX_SYMBOLS");
                (format!("{code}-USD"), generated_price(&mut rng))
            }
        };
        let (sym, spec) = precision(name, price_ref);
        symbols.push(sym);
        specs.push(spec);
    }
    (SymbolTable::new(symbols), specs)
}

/// Four-letter codes from `QAAA` upwards (175 760 of them), minus curated names.
fn generated_codes() -> impl Iterator<Item = String> {
    const FIRST: u32 = (b'Q' - b'A') as u32 * 26 * 26 * 26;
    (FIRST..26u32.pow(4))
        .map(|mut v| {
            let mut code = [b'A'; 4];
            for c in code.iter_mut().rev() {
                *c = b'A' + (v % 26) as u8;
                v /= 26;
            }
            String::from_utf8(code.to_vec()).expect("ASCII letters")
        })
        .filter(|code| !CURATED.iter().any(|(name, _)| name.strip_suffix("-USD") == Some(code)))
}

/// A log-uniform opening price, as a mantissa at `REF_SCALE`.
fn generated_price(rng: &mut ChaCha8Rng) -> i64 {
    let (lo, hi) = GENERATED_PRICE_RANGE;
    let u: f64 = rng.random();
    let p = lo * (hi / lo).powf(u);
    (p * 10f64.powi(i32::from(REF_SCALE))).round() as i64
}

/// Applies the precision rule of the module docs to a price given at `REF_SCALE`.
fn precision(name: String, price_ref: i64) -> (Symbol, SymbolSpec) {
    assert!(price_ref > 0, "opening price of {name} must be positive");
    // floor(log10 p) from the digit count of the mantissa.
    let magnitude = price_ref.ilog10() as i32 - i32::from(REF_SCALE);
    let px_scale = (5 - magnitude).clamp(2, i32::from(REF_SCALE)) as u8;
    let qty_scale = (magnitude + 4).clamp(2, 8) as u8;
    let drop = 10i64.pow(u32::from(REF_SCALE - px_scale));
    let mid0 = ((price_ref + drop / 2) / drop).max(1);
    // size_unit = SIZE_UNIT_USD / p × 10^qty_scale, with p = mid0 / 10^px_scale.
    let size_unit =
        SIZE_UNIT_USD * 10i128.pow(u32::from(qty_scale) + u32::from(px_scale)) / i128::from(mid0);
    let size_unit = i64::try_from(size_unit).unwrap_or(i64::MAX / 1_000_000).max(1);
    (Symbol { name, px_scale, qty_scale }, SymbolSpec { mid0, size_unit })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// `^[A-Z0-9]{2,8}-USD$`, by hand.
    pub(crate) fn well_formed(name: &str) -> bool {
        name.strip_suffix("-USD").is_some_and(|base| {
            (2..=8).contains(&base.len())
                && base.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        })
    }

    #[test]
    fn curated_names_are_distinct_and_well_formed() {
        let names: HashSet<&str> = CURATED.iter().map(|(n, _)| *n).collect();
        assert_eq!(names.len(), CURATED.len());
        assert!(CURATED.len() >= 50);
        for (name, _) in CURATED {
            assert!(well_formed(name), "{name}");
        }
    }

    #[test]
    fn largest_universe_has_unique_well_formed_names() {
        let (table, specs) = universe(100_000, 1);
        assert_eq!(table.len(), 100_000);
        let mut seen = HashSet::new();
        for (sym, spec) in table.iter().zip(&specs) {
            assert!(well_formed(&sym.name), "{}", sym.name);
            assert!(seen.insert(sym.name.clone()), "duplicate {}", sym.name);
            assert!((2..=8).contains(&sym.px_scale) && (2..=8).contains(&sym.qty_scale));
            assert!(spec.mid0 >= 100_000, "{}: mid {} too coarse", sym.name, spec.mid0);
            assert!(spec.size_unit >= 1);
        }
        assert_eq!(table.get(0).name, "BTC-USD");
        assert_eq!(table.get(CURATED.len() as u32).name, "QAAA-USD");
    }

    #[test]
    fn precision_follows_the_rule() {
        let (t, s) = universe(5, 9);
        let btc = t.get(0);
        assert_eq!((btc.px_scale, btc.qty_scale, s[0].mid0), (2, 8, 6_425_000));
        let eth = t.get(1);
        assert_eq!((eth.px_scale, eth.qty_scale, s[1].mid0), (2, 7, 320_115));
        let sol = t.get(2);
        assert_eq!((sol.px_scale, sol.qty_scale, s[2].mid0), (3, 6, 151_420));
        let doge = t.get(4);
        assert_eq!((doge.px_scale, doge.qty_scale, s[4].mid0), (6, 3, 154_200));
        // ~100 USD of BTC: 0.00155642 BTC.
        assert_eq!(s[0].size_unit, 155_642);
    }

    #[test]
    fn universe_prefix_does_not_depend_on_size() {
        let (small, small_specs) = universe(60, 4);
        let (large, large_specs) = universe(600, 4);
        for i in 0..60 {
            assert_eq!(small.get(i), large.get(i));
            assert_eq!(small_specs[i as usize], large_specs[i as usize]);
        }
    }

    #[test]
    fn generated_prices_depend_on_the_seed_and_stay_in_range() {
        let (_, a) = universe(200, 1);
        let (tb, b) = universe(200, 2);
        assert_ne!(a[CURATED.len()..], b[CURATED.len()..]);
        for (sym, spec) in tb.iter().zip(&b).skip(CURATED.len()) {
            let p = spec.mid0 as f64 / 10f64.powi(i32::from(sym.px_scale));
            assert!((0.0099..=2000.1).contains(&p), "{}: {p}", sym.name);
        }
    }
}
