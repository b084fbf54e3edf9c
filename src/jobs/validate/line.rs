//! One request line read in one pass: the four members the rules look at (`custom_id`, `method`, `url`, and
//! `body.model`) are kept as raw JSON borrowed from the line, every other value is skipped while serde_json checks it
//! is JSON. A repeated key keeps its last value, as a plain JSON parse does (duplicates are not refused: the service
//! may not refuse them). One pass over the request body, the bulk of each line, is what keeps validating a 200 MB
//! file within the time target (docs/performance.md).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// The members of a line that the rules read.
#[derive(Default)]
pub(super) struct Line<'a> {
    pub custom_id: Option<&'a RawValue>,
    pub method: Option<&'a RawValue>,
    pub url: Option<&'a RawValue>,
    pub body: Option<Body<'a>>,
}

/// `body`: an object with its `model` (if any), or any other JSON value.
pub(super) enum Body<'a> {
    Object { model: Option<&'a RawValue> },
    NotObject,
}

/// A key, borrowed from the line unless it has escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Line<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct LineVisitor;
        impl<'de> Visitor<'de> for LineVisitor {
            type Value = Line<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Line<'de>, A::Error> {
                let mut line = Line::default();
                while let Some(Key(key)) = map.next_key()? {
                    match key.as_ref() {
                        "custom_id" => line.custom_id = Some(map.next_value()?),
                        "method" => line.method = Some(map.next_value()?),
                        "url" => line.url = Some(map.next_value()?),
                        "body" => line.body = Some(map.next_value()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(line)
            }
        }
        d.deserialize_map(LineVisitor)
    }
}

impl<'de> Deserialize<'de> for Body<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BodyVisitor;
        impl<'de> Visitor<'de> for BodyVisitor {
            type Value = Body<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Body<'de>, A::Error> {
                let mut model = None;
                while let Some(Key(key)) = map.next_key()? {
                    if key == "model" {
                        model = Some(map.next_value()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Body::Object { model })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Body<'de>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Body::NotObject)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Body<'de>, E> {
                Ok(Body::NotObject)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Body<'de>, E> {
                Ok(Body::NotObject)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Body<'de>, E> {
                Ok(Body::NotObject)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Body<'de>, E> {
                Ok(Body::NotObject)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Body<'de>, E> {
                Ok(Body::NotObject)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Body<'de>, E> {
                Ok(Body::NotObject)
            }
        }
        d.deserialize_any(BodyVisitor)
    }
}
