//! The XML of S3: the bodies of answers (written here with every value escaped) and the two
//! request bodies S3 clients send (CompleteMultipartUpload, Delete), parsed with quick-xml's
//! serde support and size-limited before.

use quick_xml::escape::escape;
use serde::Deserialize;

use crate::error::S3Error;

pub const XMLNS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// Builds a document.
pub struct Xml(String);

impl Xml {
    pub fn new(root: &str) -> Self {
        Xml(format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{root} xmlns=\"{XMLNS}\">"
        ))
    }

    /// A document whose root has no namespace (errors).
    pub fn bare(root: &str) -> Self {
        Xml(format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{root}>"
        ))
    }

    pub fn open(&mut self, tag: &str) -> &mut Self {
        self.0.push('<');
        self.0.push_str(tag);
        self.0.push('>');
        self
    }

    pub fn close(&mut self, tag: &str) -> &mut Self {
        self.0.push_str("</");
        self.0.push_str(tag);
        self.0.push('>');
        self
    }

    /// `<tag>value</tag>`, the value escaped.
    pub fn el(&mut self, tag: &str, value: impl AsRef<str>) -> &mut Self {
        self.open(tag);
        self.0.push_str(&escape(value.as_ref()));
        self.close(tag)
    }

    pub fn finish(mut self, root: &str) -> String {
        self.close(root);
        self.0
    }
}

/// `<CompleteMultipartUpload>`.
#[derive(Debug, Deserialize)]
pub struct CompleteMultipartUpload {
    #[serde(rename = "Part", default)]
    pub parts: Vec<CompletePart>,
}

#[derive(Debug, Deserialize)]
pub struct CompletePart {
    #[serde(rename = "PartNumber")]
    pub number: i64,
    #[serde(rename = "ETag")]
    pub etag: String,
}

/// `<Delete>` of DeleteObjects.
#[derive(Debug, Deserialize)]
pub struct Delete {
    #[serde(rename = "Object", default)]
    pub objects: Vec<DeleteObject>,
    #[serde(rename = "Quiet", default)]
    pub quiet: bool,
}

#[derive(Debug, Deserialize)]
pub struct DeleteObject {
    #[serde(rename = "Key")]
    pub key: String,
}

/// `<CreateBucketConfiguration>` (the location constraint is accepted and ignored).
#[derive(Debug, Deserialize)]
pub struct CreateBucketConfiguration {
    #[serde(rename = "LocationConstraint", default)]
    pub location: Option<String>,
}

/// Parses a request body.
pub fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, S3Error> {
    let text = std::str::from_utf8(body)
        .map_err(|_| S3Error::MalformedXML("the body is not UTF-8".into()))?;
    quick_xml::de::from_str(text).map_err(|e| S3Error::MalformedXML(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_complete_and_refuses_garbage() {
        let c: CompleteMultipartUpload = parse(
            br#"<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Part><ETag>"a"</ETag><PartNumber>1</PartNumber></Part><Part><PartNumber>2</PartNumber><ETag>b</ETag></Part></CompleteMultipartUpload>"#,
        )
        .expect("parse");
        assert_eq!(c.parts.len(), 2);
        assert_eq!(c.parts[1].number, 2);
        assert!(parse::<CompleteMultipartUpload>(b"<Complete").is_err());
        let d: Delete =
            parse(b"<Delete><Object><Key>a&amp;b</Key></Object><Quiet>true</Quiet></Delete>")
                .expect("parse");
        assert_eq!(d.objects[0].key, "a&b");
        assert!(d.quiet);
        let mut x = Xml::new("R");
        x.el("Key", "a<b");
        assert!(x.finish("R").contains("<Key>a&lt;b</Key>"));
    }
}
