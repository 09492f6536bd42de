//! Images made by the tests themselves: gradients with noise, so that
//! encoders cannot shrink them to nothing, at any size and in every format
//! memgate reads, plus hostile ones built byte by byte.

#![allow(dead_code)]

use std::io::{Cursor, Write};

use flate2::Compression;
use flate2::write::ZlibEncoder;
use image::codecs::gif::{GifEncoder, Repeat};
use image::codecs::jpeg::JpegEncoder;
use image::{Delay, DynamicImage, Frame, ImageFormat, RgbImage, Rgba, RgbaImage};

/// A gradient with noise, `width` by `height`.
pub fn rgb(width: u32, height: u32, seed: u32) -> RgbImage {
    let mut noise = seed.wrapping_mul(2_654_435_761) | 1;
    RgbImage::from_fn(width, height, |x, y| {
        // xorshift32: cheap, deterministic detail for the encoders.
        noise ^= noise << 13;
        noise ^= noise >> 17;
        noise ^= noise << 5;
        let grain = noise & 0x1f;
        let r = (x * 255 / width.max(1) + grain) as u8;
        let g = (y * 255 / height.max(1) + grain) as u8;
        let b = ((x + y) % 256) as u8;
        image::Rgb([r, g, b])
    })
}

/// Smooth shapes with a fine grain, closer to a photograph than
/// [`rgb`]: as a JPEG at quality 90, 24 MP take about 7 MB, in the range
/// of a camera's, where the noisy gradient takes 17.
pub fn photo(width: u32, height: u32) -> RgbImage {
    let mut noise = 12_345u32;
    RgbImage::from_fn(width, height, |x, y| {
        noise ^= noise << 13;
        noise ^= noise >> 17;
        noise ^= noise << 5;
        let grain = (noise & 0x0f) as f32;
        let fx = x as f32 / width.max(1) as f32;
        let fy = y as f32 / height.max(1) as f32;
        let r = 120.0 + 100.0 * (fx * 20.0).sin() * (fy * 7.0).cos() + grain;
        let g = 120.0 + 90.0 * (fy * 13.0 + fx * 3.0).sin() + grain;
        let b = (((x ^ y) & 0x3f) + 64) as f32 + grain;
        image::Rgb([r as u8, g as u8, b as u8])
    })
}

/// A gradient with noise and a varying alpha channel.
pub fn rgba(width: u32, height: u32, seed: u32) -> RgbaImage {
    let base = rgb(width, height, seed);
    RgbaImage::from_fn(width, height, |x, y| {
        let [r, g, b] = base.get_pixel(x, y).0;
        Rgba([r, g, b, (x * 255 / width.max(1)) as u8])
    })
}

/// A baseline JPEG of a noisy gradient.
pub fn jpeg(width: u32, height: u32, quality: u8) -> Vec<u8> {
    encoded_jpeg(DynamicImage::ImageRgb8(rgb(width, height, 1)), quality)
}

/// `image` as a baseline JPEG.
pub fn encoded_jpeg(image: DynamicImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let encoder = JpegEncoder::new_with_quality(&mut out, quality);
    image.write_with_encoder(encoder).expect("encode jpeg");
    out
}

/// `image` as a lossy WebP, by libwebp.
pub fn webp_lossy(image: &RgbImage, quality: u8) -> Vec<u8> {
    webp::Encoder::from_rgb(image, image.width(), image.height())
        .encode_simple(false, f32::from(quality))
        .expect("encode webp")
        .to_vec()
}

/// A progressive JPEG of a noisy gradient: its decoder keeps every
/// coefficient until the last scan. Below quality 90 the chroma is
/// subsampled (4:2:0), from 90 it is not (4:4:4).
pub fn jpeg_progressive(width: u16, height: u16, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, quality);
    encoder.set_progressive(true);
    let pixels = rgb(u32::from(width), u32::from(height), 4);
    encoder
        .encode(&pixels, width, height, jpeg_encoder::ColorType::Rgb)
        .expect("encode progressive jpeg");
    out
}

/// A baseline JPEG whose EXIF block says to display it with
/// `orientation` (1 to 8; 6 is "rotate 90 degrees clockwise").
pub fn jpeg_oriented(width: u16, height: u16, orientation: u8) -> Vec<u8> {
    // A little-endian TIFF header and one IFD with one entry: tag 0x0112
    // (Orientation), type SHORT, count 1, the value, then no next IFD.
    let tiff = [
        0x49,
        0x49,
        0x2a,
        0x00,
        0x08,
        0x00,
        0x00,
        0x00, // header
        0x01,
        0x00, // one entry
        0x12,
        0x01,
        0x03,
        0x00,
        0x01,
        0x00,
        0x00,
        0x00,
        orientation,
        0x00,
        0x00,
        0x00,
        0x00,
        0x00,
        0x00,
        0x00, // no next IFD
    ];
    let mut out = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, 85);
    encoder.add_exif_metadata(&tiff).expect("exif");
    let pixels = rgb(u32::from(width), u32::from(height), 5);
    encoder
        .encode(&pixels, width, height, jpeg_encoder::ColorType::Rgb)
        .expect("encode jpeg");
    out
}

/// An image in `format` (PNG, WebP lossless, GIF, JPEG).
pub fn encoded(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

/// An RGBA PNG of a noisy gradient.
pub fn png_rgba(width: u32, height: u32) -> Vec<u8> {
    encoded(
        DynamicImage::ImageRgba8(rgba(width, height, 2)),
        ImageFormat::Png,
    )
}

/// A GIF of `frames` frames.
pub fn gif_animated(width: u32, height: u32, frames: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut out);
        encoder.set_repeat(Repeat::Infinite).expect("repeat");
        for i in 0..frames {
            let frame = Frame::from_parts(
                rgba(width, height, i + 3),
                0,
                0,
                Delay::from_numer_denom_ms(100, 1),
            );
            encoder.encode_frame(frame).expect("encode frame");
        }
    }
    out
}

/// A PNG of about a hundred bytes whose header declares `width` by
/// `height` RGBA pixels: 30000 by 30000 would decode to 3.6 GB.
pub fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    // A zlib stream of an empty stored block: valid, and nowhere near the
    // declared size.
    let data = [
        0x78, 0x01, 0x01, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01,
    ];
    rgba_png(width, height, &data)
}

/// A real decompression bomb: a PNG of `width` by `height` transparent
/// RGBA pixels whose every row is zeros, so that a file about a thousandth
/// of its decoded size inflates to all of it.
pub fn png_zlib_bomb(width: u32, height: u32) -> Vec<u8> {
    // Each row: filter type 0, then its samples.
    let row = vec![0u8; 1 + 4 * width as usize];
    let mut zlib = ZlibEncoder::new(Vec::new(), Compression::best());
    for _ in 0..height {
        zlib.write_all(&row).expect("compress a row");
    }
    let data = zlib.finish().expect("finish the stream");
    rgba_png(width, height, &data)
}

/// A PNG whose header declares `width` by `height` RGBA pixels and whose
/// one IDAT chunk is `zlib`, whatever it holds.
fn rgba_png(width: u32, height: u32, zlib: &[u8]) -> Vec<u8> {
    let mut header = Vec::new();
    header.extend_from_slice(&width.to_be_bytes());
    header.extend_from_slice(&height.to_be_bytes());
    // 8 bits per sample, colour type 6 (RGBA), deflate, filter 0, no
    // interlace.
    header.extend_from_slice(&[8, 6, 0, 0, 0]);

    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &header);
    chunk(&mut png, b"IDAT", zlib);
    chunk(&mut png, b"IEND", &[]);
    png
}

/// `jpeg`, a real JPEG, whose frame header (SOF0 or SOF2) now declares
/// `width` by `height`: the tables stay valid, so the header reads, but
/// the pixels are nowhere near the declared size.
pub fn jpeg_bomb(jpeg: &[u8], width: u16, height: u16) -> Vec<u8> {
    let mut out = jpeg.to_vec();
    let sof = out
        .windows(2)
        .position(|m| m == [0xff, 0xc0] || m == [0xff, 0xc2])
        .expect("a frame header");
    // Marker, length (2), precision (1), then height and width, big-endian.
    out[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    out[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    out
}

/// `webp`, a real lossy WebP, whose VP8 frame header now declares
/// `width` by `height` (at most 16383 each).
pub fn webp_bomb(webp: &[u8], width: u16, height: u16) -> Vec<u8> {
    let mut out = webp.to_vec();
    let start = out
        .windows(3)
        .position(|m| m == [0x9d, 0x01, 0x2a])
        .expect("a VP8 start code");
    // Width and height follow the start code: 14 bits each, little-endian,
    // the top two bits a scale, left at zero.
    out[start + 3..start + 5].copy_from_slice(&(width & 0x3fff).to_le_bytes());
    out[start + 5..start + 7].copy_from_slice(&(height & 0x3fff).to_le_bytes());
    out
}

/// `gif`, a real GIF, whose logical screen now declares `width` by
/// `height`: the decoder composes every frame on a canvas that size.
pub fn gif_bomb(gif: &[u8], width: u16, height: u16) -> Vec<u8> {
    let mut out = gif.to_vec();
    // "GIF89a", then the screen's width and height, little-endian.
    out[6..8].copy_from_slice(&width.to_le_bytes());
    out[8..10].copy_from_slice(&height.to_le_bytes());
    out
}

/// `image` cut to its first `keep` bytes.
pub fn truncated(image: &[u8], keep: usize) -> Vec<u8> {
    image[..keep.min(image.len())].to_vec()
}

/// Appends a PNG chunk with its CRC.
fn chunk(png: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    png.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = png.len();
    png.extend_from_slice(kind);
    png.extend_from_slice(data);
    let crc = crc32(&png[start..]);
    png.extend_from_slice(&crc.to_be_bytes());
}

/// The CRC-32 PNG chunks carry (ISO 3309, reflected, 0xedb88320).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

/// The format and size of an encoded image, read back with `image`.
pub fn decoded(bytes: &[u8]) -> (ImageFormat, u32, u32) {
    let format = image::guess_format(bytes).expect("a known format");
    let image = image::load_from_memory(bytes).expect("decodable output");
    (format, image.width(), image.height())
}
