//! XAR archives, the container of a flat package: a writer with signature slots and a reader.
//!
//! # Format
//!
//! ```text
//! header (28 bytes, big-endian): "xar!" | u16 header size 28 | u16 version 1 |
//!                                u64 TOC compressed length | u64 TOC uncompressed length |
//!                                u32 checksum algorithm (1 = sha1)
//! TOC:  zlib-compressed XML
//! heap: [sha1 of the compressed TOC, 20 bytes][RSA signature][CMS signature][file data ...]
//! ```
//!
//! The TOC declares every heap region: `<checksum style="sha1">` at offset 0, optional
//! `<signature style="RSA">` and `<x-signature style="CMS">` (each with the certificate chain in
//! `KeyInfo/X509Data`, base64 DER, leaf first), then nested `<file>` elements whose `<data>` gives
//! `offset`/`length` (archived bytes) and `size` (extracted bytes), `encoding`, and sha1
//! `archived-checksum`/`extracted-checksum`. Signatures sign the TOC checksum, which covers the
//! TOC, which covers every file's checksums: the chain of trust a verifier must walk to the
//! bytes.
//!
//! The writer stores files uncompressed (`application/octet-stream`; the payload is already
//! gzip'd), numbers file ids and lays out the heap in document order, and emits only the TOC
//! elements Apple's and apple-xar's readers know (name, type, mode, uid, gid, user, group, data),
//! so the output is deterministic for deterministic input.

use std::fmt::Write as _;
use std::io::{Read, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::digest;

/// Size of the XAR header written and accepted here.
pub const HEADER_SIZE: usize = 28;
/// Header value of the sha1 TOC checksum algorithm.
pub const CHECKSUM_SHA1: u32 = 1;
/// Length of a sha1 digest: the TOC checksum size.
pub const SHA1_LEN: usize = 20;
/// The largest table of contents read (decompressed). A flat package's TOC is a few KiB; the
/// bound keeps a small file from inflating into gigabytes before anything in it is checked.
pub const MAX_TOC_BYTES: u64 = 16 << 20;
const MAGIC: &[u8; 4] = b"xar!";
const OCTET_STREAM: &str = "application/octet-stream";
const XMLDSIG_NS: &str = "http://www.w3.org/2000/09/xmldsig#";

/// A file or directory to store in an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XarFile {
    /// Name inside its directory.
    pub name: String,
    /// Content or children.
    pub kind: XarKind,
    /// Permission bits.
    pub perm: u32,
    /// Owner user id (user name derived: 0 is root).
    pub uid: u32,
    /// Owner group id (group name derived: 0 is wheel, 80 is admin).
    pub gid: u32,
}

/// What a [`XarFile`] holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XarKind {
    /// A regular file.
    File(Vec<u8>),
    /// A directory and its entries.
    Directory(Vec<XarFile>),
}

/// Signature style of a TOC signature element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureStyle {
    /// `<signature style="RSA">`: a raw RSA signature over the TOC checksum.
    Rsa,
    /// `<x-signature style="CMS">`: a detached CMS SignedData over the TOC checksum.
    Cms,
}

impl SignatureStyle {
    fn element(self) -> &'static str {
        match self {
            SignatureStyle::Rsa => "signature",
            SignatureStyle::Cms => "x-signature",
        }
    }

    fn style(self) -> &'static str {
        match self {
            SignatureStyle::Rsa => "RSA",
            SignatureStyle::Cms => "CMS",
        }
    }
}

/// A heap region reserved for a signature, declared in the TOC before the signature exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureSlot {
    /// Which signature.
    pub style: SignatureStyle,
    /// Exact size of the signature bytes that will fill the slot.
    pub size: usize,
    /// Certificates (DER), leaf first, listed in the element's `KeyInfo`.
    pub certificates: Vec<Vec<u8>>,
}

/// An archive that cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum XarError {
    /// zlib compression of the TOC failed.
    #[error("compress the xar table of contents")]
    Compress(#[source] std::io::Error),
    /// The bytes are not a XAR archive this reader understands.
    #[error("read xar archive: {0}")]
    Malformed(String),
    /// The TOC is not well-formed XML.
    #[error("parse xar table of contents xml")]
    Xml(#[source] roxmltree::Error),
    /// A TOC element has a missing or invalid value.
    #[error("read xar table of contents: {element} {what}")]
    Toc {
        /// Element path.
        element: String,
        /// What is wrong.
        what: String,
    },
    /// A signature does not have the size its slot declared.
    #[error("fill xar signature slot {index}: signature is {actual} bytes, slot is {expected}")]
    SlotSize {
        /// Slot index.
        index: usize,
        /// Declared size.
        expected: usize,
        /// Given size.
        actual: usize,
    },
}

fn user_name(uid: u32) -> String {
    match uid {
        0 => "root".to_owned(),
        other => other.to_string(),
    }
}

fn group_name(gid: u32) -> String {
    match gid {
        0 => "wheel".to_owned(),
        80 => "admin".to_owned(),
        other => other.to_string(),
    }
}

/// Escapes text for XML character data and attribute values.
pub fn escape_xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn sha1_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, data))
}

/// An archive laid out with its TOC checksum computed and its signature slots still zero.
#[derive(Debug, Clone)]
pub struct SealedLayout {
    bytes: Vec<u8>,
    toc_range: std::ops::Range<usize>,
    checksum: [u8; SHA1_LEN],
    slots: Vec<(usize, usize)>,
}

impl SealedLayout {
    /// The TOC checksum (sha1 of the compressed TOC): the bytes every signature signs.
    pub fn checksum(&self) -> &[u8; SHA1_LEN] {
        &self.checksum
    }

    /// The compressed TOC (what the checksum digests).
    pub fn compressed_toc(&self) -> &[u8] {
        &self.bytes[self.toc_range.clone()]
    }

    /// Writes signature `index` into its slot; its length must be the slot's declared size.
    pub fn fill_slot(&mut self, index: usize, signature: &[u8]) -> Result<(), XarError> {
        let &(offset, size) = self.slots.get(index).ok_or_else(|| XarError::Toc {
            element: "signature".to_owned(),
            what: format!("slot {index} was not reserved"),
        })?;
        if signature.len() != size {
            return Err(XarError::SlotSize {
                index,
                expected: size,
                actual: signature.len(),
            });
        }
        self.bytes[offset..offset + size].copy_from_slice(signature);
        Ok(())
    }

    /// The finished archive.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

struct TocWriter<'a> {
    xml: String,
    heap: Vec<&'a [u8]>,
    heap_len: u64,
    next_id: u64,
}

impl<'a> TocWriter<'a> {
    fn file(&mut self, file: &'a XarFile, depth: usize) {
        let pad = " ".repeat(depth + 2);
        let id = self.next_id;
        self.next_id += 1;
        // Writes to a String cannot fail.
        let _ = writeln!(self.xml, "{pad}<file id=\"{id}\">");
        if let XarKind::File(data) = &file.kind {
            let checksum = sha1_hex(data);
            let _ = write!(
                self.xml,
                "{pad} <data>\n{pad}  <length>{len}</length>\n{pad}  <offset>{off}</offset>\n\
                 {pad}  <size>{len}</size>\n{pad}  <encoding style=\"{OCTET_STREAM}\"/>\n\
                 {pad}  <archived-checksum style=\"sha1\">{checksum}</archived-checksum>\n\
                 {pad}  <extracted-checksum style=\"sha1\">{checksum}</extracted-checksum>\n\
                 {pad} </data>\n",
                len = data.len(),
                off = self.heap_len,
            );
            self.heap.push(data);
            self.heap_len += data.len() as u64;
        }
        let _ = write!(
            self.xml,
            "{pad} <mode>{:04o}</mode>\n{pad} <uid>{}</uid>\n{pad} <gid>{}</gid>\n\
             {pad} <user>{}</user>\n{pad} <group>{}</group>\n",
            file.perm & 0o7777,
            file.uid,
            file.gid,
            user_name(file.uid),
            group_name(file.gid),
        );
        let kind = match file.kind {
            XarKind::File(_) => "file",
            XarKind::Directory(_) => "directory",
        };
        let _ = writeln!(self.xml, "{pad} <type>{kind}</type>");
        let _ = writeln!(self.xml, "{pad} <name>{}</name>", escape_xml(&file.name));
        if let XarKind::Directory(children) = &file.kind {
            for child in children {
                self.file(child, depth + 1);
            }
        }
        let _ = writeln!(self.xml, "{pad}</file>");
    }
}

/// Lays out an archive of `files` whose TOC declares `slots` (in heap order after the checksum),
/// computes the TOC checksum, and returns it with the slots zero-filled.
pub fn layout(
    files: &[XarFile],
    creation_time: &str,
    slots: &[SignatureSlot],
) -> Result<SealedLayout, XarError> {
    let mut writer = TocWriter {
        xml: String::new(),
        heap: Vec::new(),
        heap_len: 0,
        next_id: 1,
    };
    let mut heap_offset = SHA1_LEN as u64;
    let mut slot_offsets = Vec::with_capacity(slots.len());
    let mut header_xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<xar>\n <toc>\n  \
         <creation-time>{}</creation-time>\n  <checksum style=\"sha1\">\n   \
         <offset>0</offset>\n   <size>{SHA1_LEN}</size>\n  </checksum>\n",
        escape_xml(creation_time)
    );
    for slot in slots {
        let element = slot.style.element();
        let _ = write!(
            header_xml,
            "  <{element} style=\"{}\">\n   <offset>{heap_offset}</offset>\n   <size>{}</size>\n   \
             <KeyInfo xmlns=\"{XMLDSIG_NS}\">\n    <X509Data>\n",
            slot.style.style(),
            slot.size,
        );
        for cert in &slot.certificates {
            let _ = writeln!(
                header_xml,
                "     <X509Certificate>{}</X509Certificate>",
                BASE64.encode(cert)
            );
        }
        let _ = write!(
            header_xml,
            "    </X509Data>\n   </KeyInfo>\n  </{element}>\n"
        );
        slot_offsets.push((heap_offset, slot.size));
        heap_offset += slot.size as u64;
    }
    writer.heap_len = heap_offset;
    for file in files {
        writer.file(file, 0);
    }
    let xml = format!("{header_xml}{} </toc>\n</xar>\n", writer.xml);

    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    encoder
        .write_all(xml.as_bytes())
        .map_err(XarError::Compress)?;
    let toc = encoder.finish().map_err(XarError::Compress)?;
    let checksum_digest = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &toc);
    let mut checksum = [0u8; SHA1_LEN];
    checksum.copy_from_slice(checksum_digest.as_ref());

    let mut bytes = Vec::with_capacity(HEADER_SIZE + toc.len() + writer.heap_len as usize);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(HEADER_SIZE as u16).to_be_bytes());
    bytes.extend_from_slice(&1u16.to_be_bytes());
    bytes.extend_from_slice(&(toc.len() as u64).to_be_bytes());
    bytes.extend_from_slice(&(xml.len() as u64).to_be_bytes());
    bytes.extend_from_slice(&CHECKSUM_SHA1.to_be_bytes());
    let toc_range = bytes.len()..bytes.len() + toc.len();
    bytes.extend_from_slice(&toc);
    let heap_start = bytes.len();
    bytes.extend_from_slice(&checksum);
    bytes.resize(heap_start + heap_offset as usize, 0);
    for chunk in writer.heap {
        bytes.extend_from_slice(chunk);
    }
    let slots = slot_offsets
        .into_iter()
        .map(|(offset, size)| (heap_start + offset as usize, size))
        .collect();
    Ok(SealedLayout {
        bytes,
        toc_range,
        checksum,
        slots,
    })
}

/// A digest declared in the TOC: algorithm name and expected value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredChecksum {
    /// `style` attribute (`sha1`, `sha256`, ...), lowercased.
    pub style: String,
    /// Hex digest, lowercased.
    pub hex: String,
}

/// A file's heap data as declared in the TOC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TocData {
    /// Heap offset of the archived bytes.
    pub offset: u64,
    /// Archived length.
    pub length: u64,
    /// Extracted size.
    pub size: u64,
    /// Encoding media type.
    pub encoding: String,
    /// Checksum of the archived bytes.
    pub archived: DeclaredChecksum,
    /// Checksum of the extracted bytes.
    pub extracted: DeclaredChecksum,
}

/// A `<file>` of the TOC with its full path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TocEntry {
    /// Slash-separated path from the archive root.
    pub path: String,
    /// `id` attribute.
    pub id: u64,
    /// True for `<type>directory</type>`.
    pub is_directory: bool,
    /// Permission bits from `<mode>`.
    pub perm: u32,
    /// `<uid>`.
    pub uid: u32,
    /// `<gid>`.
    pub gid: u32,
    /// Heap data, for files.
    pub data: Option<TocData>,
    /// Child elements this reader does not model (re-signing refuses such archives).
    pub unknown_elements: Vec<String>,
}

/// A `<signature>` or `<x-signature>` of the TOC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TocSignature {
    /// RSA or CMS.
    pub style: SignatureStyle,
    /// Heap offset.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// Certificates (DER) from `KeyInfo/X509Data`, in document order.
    pub certificates: Vec<Vec<u8>>,
}

/// A parsed archive: header facts, TOC model and the raw bytes it refers to.
#[derive(Debug, Clone)]
pub struct XarArchive<'a> {
    bytes: &'a [u8],
    /// Header checksum algorithm.
    pub checksum_algorithm: u32,
    /// Byte range of the compressed TOC in the archive.
    pub toc_range: std::ops::Range<usize>,
    /// Decompressed TOC XML.
    pub toc_xml: String,
    /// Offset of the heap in the archive.
    pub heap_start: usize,
    /// `<creation-time>`, if present.
    pub creation_time: Option<String>,
    /// `<checksum>`: style, heap offset, size.
    pub checksum: (String, u64, u64),
    /// Signatures in document order.
    pub signatures: Vec<TocSignature>,
    /// Files in document order (parents before children).
    pub entries: Vec<TocEntry>,
    /// Children of `<toc>` this reader does not model.
    pub unknown_toc_elements: Vec<String>,
}

fn toc_err(element: &str, what: impl Into<String>) -> XarError {
    XarError::Toc {
        element: element.to_owned(),
        what: what.into(),
    }
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn child_text(
    node: roxmltree::Node<'_, '_>,
    name: &str,
    context: &str,
) -> Result<String, XarError> {
    child(node, name)
        .and_then(|c| c.text())
        .map(|t| t.trim().to_owned())
        .ok_or_else(|| toc_err(context, format!("has no <{name}>")))
}

fn child_u64(node: roxmltree::Node<'_, '_>, name: &str, context: &str) -> Result<u64, XarError> {
    let text = child_text(node, name, context)?;
    text.parse()
        .map_err(|_| toc_err(context, format!("<{name}> {text:?} is not a number")))
}

fn declared_checksum(
    node: roxmltree::Node<'_, '_>,
    name: &str,
    context: &str,
) -> Result<DeclaredChecksum, XarError> {
    let element = child(node, name).ok_or_else(|| toc_err(context, format!("has no <{name}>")))?;
    Ok(DeclaredChecksum {
        style: element
            .attribute("style")
            .ok_or_else(|| toc_err(context, format!("<{name}> has no style")))?
            .to_ascii_lowercase(),
        hex: element
            .text()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase(),
    })
}

const FILE_ELEMENTS: &[&str] = &[
    "name", "type", "data", "mode", "uid", "gid", "user", "group", "file", "ctime", "mtime",
    "atime", "inode", "deviceno",
];

fn walk_file(
    node: roxmltree::Node<'_, '_>,
    parent: Option<&str>,
    out: &mut Vec<TocEntry>,
) -> Result<(), XarError> {
    let name = child_text(node, "name", "file")?;
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(toc_err(
            "file",
            format!("name {name:?} is not a plain file name"),
        ));
    }
    let path = match parent {
        Some(p) => format!("{p}/{name}"),
        None => name,
    };
    let id = node
        .attribute("id")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| toc_err(&path, "has no numeric id"))?;
    let kind = child_text(node, "type", &path)?;
    let is_directory = match kind.as_str() {
        "file" => false,
        "directory" => true,
        other => return Err(toc_err(&path, format!("has unsupported type {other:?}"))),
    };
    let perm = match child(node, "mode").and_then(|m| m.text()) {
        Some(text) => u32::from_str_radix(text.trim(), 8)
            .map_err(|_| toc_err(&path, format!("<mode> {text:?} is not octal")))?,
        None => {
            if is_directory {
                0o755
            } else {
                0o644
            }
        }
    };
    let uid = match child(node, "uid") {
        Some(_) => child_u64(node, "uid", &path)? as u32,
        None => 0,
    };
    let gid = match child(node, "gid") {
        Some(_) => child_u64(node, "gid", &path)? as u32,
        None => 0,
    };
    let data = match child(node, "data") {
        Some(d) => {
            let context = format!("{path} <data>");
            Some(TocData {
                offset: child_u64(d, "offset", &context)?,
                length: child_u64(d, "length", &context)?,
                size: child_u64(d, "size", &context)?,
                encoding: child(d, "encoding")
                    .and_then(|e| e.attribute("style"))
                    .ok_or_else(|| toc_err(&context, "has no <encoding style>"))?
                    .to_owned(),
                archived: declared_checksum(d, "archived-checksum", &context)?,
                extracted: declared_checksum(d, "extracted-checksum", &context)?,
            })
        }
        None => None,
    };
    if is_directory == data.is_some() {
        return Err(toc_err(
            &path,
            if is_directory {
                "is a directory with data"
            } else {
                "is a file without data"
            },
        ));
    }
    let unknown_elements = node
        .children()
        .filter(|c| c.is_element())
        .map(|c| c.tag_name().name().to_owned())
        .filter(|n| !FILE_ELEMENTS.contains(&n.as_str()))
        .collect();
    out.push(TocEntry {
        path: path.clone(),
        id,
        is_directory,
        perm,
        uid,
        gid,
        data,
        unknown_elements,
    });
    for sub in node
        .children()
        .filter(|c| c.is_element() && c.tag_name().name() == "file")
    {
        walk_file(sub, Some(&path), out)?;
    }
    Ok(())
}

impl<'a> XarArchive<'a> {
    /// Parses the header and the TOC of `bytes`.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, XarError> {
        let malformed = |what: &str| XarError::Malformed(what.to_owned());
        if bytes.len() < HEADER_SIZE || &bytes[..4] != MAGIC {
            return Err(malformed("missing \"xar!\" magic"));
        }
        let be16 = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
        let be64 = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(b)
        };
        if usize::from(be16(4)) != HEADER_SIZE {
            return Err(XarError::Malformed(format!(
                "header size {} is not {HEADER_SIZE}",
                be16(4)
            )));
        }
        if be16(6) != 1 {
            return Err(XarError::Malformed(format!("version {} is not 1", be16(6))));
        }
        let toc_len = usize::try_from(be64(8)).map_err(|_| malformed("toc length overflows"))?;
        let toc_plain_len = be64(16);
        let checksum_algorithm = u32::from_be_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
        let toc_end = HEADER_SIZE
            .checked_add(toc_len)
            .filter(|end| *end <= bytes.len())
            .ok_or_else(|| malformed("table of contents runs past the end of the file"))?;
        if toc_plain_len > MAX_TOC_BYTES {
            return Err(XarError::Malformed(format!(
                "header says the table of contents is {toc_plain_len} bytes, more than the \
                 {MAX_TOC_BYTES} read"
            )));
        }
        // Inflated up to one byte past the declared length: enough to see a longer stream.
        let mut xml = Vec::new();
        flate2::read::ZlibDecoder::new(&bytes[HEADER_SIZE..toc_end])
            .take(toc_plain_len + 1)
            .read_to_end(&mut xml)
            .map_err(|e| XarError::Malformed(format!("table of contents is not zlib data: {e}")))?;
        if xml.len() as u64 > toc_plain_len {
            return Err(XarError::Malformed(format!(
                "table of contents is longer than the {toc_plain_len} bytes the header says"
            )));
        }
        if xml.len() as u64 != toc_plain_len {
            return Err(XarError::Malformed(format!(
                "table of contents is {} bytes, header says {toc_plain_len}",
                xml.len()
            )));
        }
        let toc_xml = String::from_utf8(xml).map_err(|_| malformed("toc is not UTF-8"))?;
        let doc = roxmltree::Document::parse(&toc_xml).map_err(XarError::Xml)?;
        let root = doc.root_element();
        if root.tag_name().name() != "xar" {
            return Err(toc_err("xar", "root element is not <xar>"));
        }
        let toc = child(root, "toc").ok_or_else(|| toc_err("xar", "has no <toc>"))?;
        let checksum_node =
            child(toc, "checksum").ok_or_else(|| toc_err("toc", "has no <checksum>"))?;
        let checksum = (
            checksum_node
                .attribute("style")
                .ok_or_else(|| toc_err("checksum", "has no style"))?
                .to_ascii_lowercase(),
            child_u64(checksum_node, "offset", "checksum")?,
            child_u64(checksum_node, "size", "checksum")?,
        );
        let creation_time = child(toc, "creation-time")
            .and_then(|c| c.text())
            .map(|t| t.trim().to_owned());
        let mut signatures = Vec::new();
        let mut entries = Vec::new();
        let mut unknown_toc_elements = Vec::new();
        for node in toc.children().filter(|c| c.is_element()) {
            match node.tag_name().name() {
                "creation-time" | "checksum" => {}
                name @ ("signature" | "x-signature") => {
                    let style = match node.attribute("style") {
                        Some("RSA") => SignatureStyle::Rsa,
                        Some("CMS") => SignatureStyle::Cms,
                        other => {
                            return Err(toc_err(name, format!("has unsupported style {other:?}")));
                        }
                    };
                    let certificates = match child(node, "KeyInfo")
                        .and_then(|k| child(k, "X509Data"))
                    {
                        Some(data) => data
                            .children()
                            .filter(|c| c.is_element() && c.tag_name().name() == "X509Certificate")
                            .map(|c| {
                                let text: String = c
                                    .text()
                                    .unwrap_or_default()
                                    .chars()
                                    .filter(|ch| !ch.is_ascii_whitespace())
                                    .collect();
                                BASE64.decode(text).map_err(|_| {
                                    toc_err(name, "has an X509Certificate that is not base64")
                                })
                            })
                            .collect::<Result<Vec<_>, _>>()?,
                        None => Vec::new(),
                    };
                    signatures.push(TocSignature {
                        style,
                        offset: child_u64(node, "offset", name)?,
                        size: child_u64(node, "size", name)?,
                        certificates,
                    });
                }
                "file" => walk_file(node, None, &mut entries)?,
                other => unknown_toc_elements.push(other.to_owned()),
            }
        }
        Ok(Self {
            bytes,
            checksum_algorithm,
            toc_range: HEADER_SIZE..toc_end,
            toc_xml,
            heap_start: toc_end,
            creation_time,
            checksum,
            signatures,
            entries,
            unknown_toc_elements,
        })
    }

    /// The whole archive.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The compressed TOC bytes (what the TOC checksum digests).
    pub fn compressed_toc(&self) -> &'a [u8] {
        &self.bytes[self.toc_range.clone()]
    }

    /// The heap bytes at `offset..offset + len`, or an error naming `what` when out of range.
    pub fn heap(&self, offset: u64, len: u64, what: &str) -> Result<&'a [u8], XarError> {
        let start = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(self.heap_start));
        let end = start.and_then(|s| usize::try_from(len).ok().and_then(|l| s.checked_add(l)));
        match (start, end) {
            (Some(s), Some(e)) if e <= self.bytes.len() => Ok(&self.bytes[s..e]),
            _ => Err(XarError::Malformed(format!(
                "{what} at heap offset {offset} length {len} runs past the end of the file"
            ))),
        }
    }

    /// The stored TOC checksum bytes.
    pub fn stored_checksum(&self) -> Result<&'a [u8], XarError> {
        self.heap(self.checksum.1, self.checksum.2, "toc checksum")
    }

    /// The signature of `style`, if the TOC declares one.
    pub fn signature(&self, style: SignatureStyle) -> Option<&TocSignature> {
        self.signatures.iter().find(|s| s.style == style)
    }

    /// The archived (heap) bytes of a file entry.
    pub fn archived_data(&self, entry: &TocEntry) -> Result<&'a [u8], XarError> {
        let data = entry
            .data
            .as_ref()
            .ok_or_else(|| toc_err(&entry.path, "has no data"))?;
        self.heap(data.offset, data.length, &entry.path)
    }

    /// Rebuilds the file tree (for re-signing). Refuses archives with TOC elements or encodings
    /// this writer would not reproduce, rather than dropping them silently.
    pub fn to_files(&self) -> Result<Vec<XarFile>, XarError> {
        if let Some(unknown) = self.unknown_toc_elements.first() {
            return Err(toc_err(
                "toc",
                format!("has element <{unknown}> this tool cannot re-sign"),
            ));
        }
        let mut roots: Vec<XarFile> = Vec::new();
        for entry in &self.entries {
            if let Some(unknown) = entry.unknown_elements.first() {
                return Err(toc_err(
                    &entry.path,
                    format!("has element <{unknown}> this tool cannot re-sign"),
                ));
            }
            let kind = match &entry.data {
                None => XarKind::Directory(Vec::new()),
                Some(data) if data.encoding == OCTET_STREAM => {
                    XarKind::File(self.archived_data(entry)?.to_vec())
                }
                Some(data) => {
                    return Err(toc_err(
                        &entry.path,
                        format!("has encoding {} this tool cannot re-sign", data.encoding),
                    ));
                }
            };
            let file = XarFile {
                name: entry.path.rsplit('/').next().unwrap_or_default().to_owned(),
                kind,
                perm: entry.perm,
                uid: entry.uid,
                gid: entry.gid,
            };
            let mut siblings = &mut roots;
            let mut components: Vec<&str> = entry.path.split('/').collect();
            components.pop();
            for component in components {
                let parent = siblings
                    .iter_mut()
                    .find(|f| f.name == component)
                    .ok_or_else(|| toc_err(&entry.path, "parent directory missing"))?;
                siblings = match &mut parent.kind {
                    XarKind::Directory(children) => children,
                    XarKind::File(_) => {
                        return Err(toc_err(&entry.path, "parent is not a directory"));
                    }
                };
            }
            siblings.push(file);
        }
        Ok(roots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> Vec<XarFile> {
        vec![
            XarFile {
                name: "Distribution".to_owned(),
                kind: XarKind::File(b"<installer-gui-script/>".to_vec()),
                perm: 0o644,
                uid: 0,
                gid: 0,
            },
            XarFile {
                name: "a.pkg".to_owned(),
                kind: XarKind::Directory(vec![
                    XarFile {
                        name: "Payload".to_owned(),
                        kind: XarKind::File(vec![7u8; 5000]),
                        perm: 0o644,
                        uid: 0,
                        gid: 0,
                    },
                    XarFile {
                        name: "Empty".to_owned(),
                        kind: XarKind::File(Vec::new()),
                        perm: 0o600,
                        uid: 0,
                        gid: 80,
                    },
                ]),
                perm: 0o755,
                uid: 0,
                gid: 0,
            },
        ]
    }

    #[test]
    fn written_archive_parses_back_with_valid_checksums() {
        let bytes = layout(&files(), "2025-01-01T00:00:00", &[])
            .expect("layout")
            .into_bytes();
        let archive = XarArchive::parse(&bytes).expect("parse");
        assert_eq!(archive.checksum, ("sha1".to_owned(), 0, 20));
        let digest = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, archive.compressed_toc());
        assert_eq!(
            archive.stored_checksum().expect("checksum"),
            digest.as_ref()
        );
        let paths: Vec<&str> = archive.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["Distribution", "a.pkg", "a.pkg/Payload", "a.pkg/Empty"]
        );
        for entry in archive.entries.iter().filter(|e| !e.is_directory) {
            let data = archive.archived_data(entry).expect("data");
            let declared = entry.data.as_ref().expect("declared");
            assert_eq!(sha1_hex(data), declared.archived.hex);
        }
        assert_eq!(archive.to_files().expect("files"), files());
    }

    #[test]
    fn signature_slots_are_declared_before_the_files_and_filled_in_place() {
        let slots = [
            SignatureSlot {
                style: SignatureStyle::Rsa,
                size: 256,
                certificates: vec![b"leaf".to_vec(), b"ca".to_vec()],
            },
            SignatureSlot {
                style: SignatureStyle::Cms,
                size: 1000,
                certificates: vec![b"leaf".to_vec()],
            },
        ];
        let mut sealed = layout(&files(), "2025-01-01T00:00:00", &slots).expect("layout");
        sealed.fill_slot(0, &[1u8; 256]).expect("rsa");
        sealed.fill_slot(1, &[2u8; 1000]).expect("cms");
        assert!(matches!(
            sealed.fill_slot(1, &[2u8; 999]),
            Err(XarError::SlotSize { .. })
        ));
        let bytes = sealed.into_bytes();
        let archive = XarArchive::parse(&bytes).expect("parse");
        let rsa = archive.signature(SignatureStyle::Rsa).expect("rsa");
        assert_eq!((rsa.offset, rsa.size), (20, 256));
        assert_eq!(rsa.certificates, [b"leaf".to_vec(), b"ca".to_vec()]);
        assert_eq!(archive.heap(20, 256, "rsa").expect("rsa"), &[1u8; 256][..]);
        let cms = archive.signature(SignatureStyle::Cms).expect("cms");
        assert_eq!((cms.offset, cms.size), (276, 1000));
        let first = archive.entries[0].data.as_ref().expect("data");
        assert_eq!(first.offset, 1276);
    }

    #[test]
    fn bsdtar_lists_and_extracts_the_archive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.xar");
        let bytes = layout(&files(), "2025-01-01T00:00:00", &[])
            .expect("layout")
            .into_bytes();
        std::fs::write(&path, bytes).expect("write");
        let out = std::process::Command::new("bsdtar")
            .arg("-tf")
            .arg(&path)
            .output()
            .expect("bsdtar must be installed to run this test (apt-get install libarchive-tools)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        let mut names: Vec<&str> = listing.lines().collect();
        names.sort();
        assert_eq!(
            names,
            ["Distribution", "a.pkg", "a.pkg/Empty", "a.pkg/Payload"]
        );
        let out = std::process::Command::new("bsdtar")
            .arg("-xf")
            .arg(&path)
            .current_dir(dir.path())
            .output()
            .expect("bsdtar");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read(dir.path().join("a.pkg/Payload")).expect("payload"),
            vec![7u8; 5000]
        );
    }

    #[test]
    fn rejects_bad_headers_and_truncation() {
        let bytes = layout(&files(), "t", &[]).expect("layout").into_bytes();
        let mut wrong_magic = bytes.clone();
        wrong_magic[0] = b'X';
        assert!(XarArchive::parse(&wrong_magic).is_err());
        let mut wrong_len = bytes.clone();
        wrong_len[23] ^= 1;
        assert!(XarArchive::parse(&wrong_len).is_err());
        assert!(XarArchive::parse(&bytes[..40]).is_err());
    }

    /// A header and `toc` zlib-compressed, declaring `declared` decompressed bytes.
    fn archive_with_toc(toc: &[u8], declared: u64) -> Vec<u8> {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(toc).expect("compress");
        let compressed = z.finish().expect("compress");
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&(HEADER_SIZE as u16).to_be_bytes());
        bytes.extend_from_slice(&1u16.to_be_bytes());
        bytes.extend_from_slice(&(compressed.len() as u64).to_be_bytes());
        bytes.extend_from_slice(&declared.to_be_bytes());
        bytes.extend_from_slice(&CHECKSUM_SHA1.to_be_bytes());
        bytes.extend_from_slice(&compressed);
        bytes
    }

    fn malformed(bytes: &[u8]) -> String {
        match XarArchive::parse(bytes) {
            Err(XarError::Malformed(what)) => what,
            other => panic!("expected a malformed archive, got {other:?}"),
        }
    }

    // Found by fuzzing (pkg_verify): a 3 MB package whose TOC inflates to 3 GiB made the reader
    // allocate it all before comparing with the header.
    #[test]
    fn a_toc_is_not_inflated_past_the_length_its_header_declares() {
        let mut bomb = archive_with_toc(&vec![b' '; 8 << 20], 100);
        // A wrong Adler-32 trailer: only a reader that inflates the whole stream sees it.
        *bomb.last_mut().expect("trailer") ^= 1;
        assert_eq!(
            malformed(&bomb),
            "table of contents is longer than the 100 bytes the header says"
        );
        let short = archive_with_toc(b"<xar/>", 100);
        assert_eq!(
            malformed(&short),
            "table of contents is 6 bytes, header says 100"
        );
    }

    #[test]
    fn a_toc_declared_larger_than_the_bound_is_refused_unread() {
        let toc = vec![b' '; 64];
        assert!(malformed(&archive_with_toc(&toc, MAX_TOC_BYTES + 1)).contains("more than"));
    }
}
