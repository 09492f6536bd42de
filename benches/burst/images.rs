//! The images of the `mixed-images` workload: JPEGs from 1 to 40
//! megapixels, generated here and cached under the output directory.
//!
//! Sizes are heavy-tailed, as uploads are: each size is drawn with a
//! weight of 1 / sqrt(megapixels), so most images are small and a few are
//! huge (24 MP and more: about one image in nine).
//! The content is smooth shapes with a fine grain, which compresses about
//! as a photograph does (a quarter of a byte per pixel at quality 85),
//! rather than noise, which would make the decoder's work unrealistically
//! heavy.

use std::fs;
use std::path::Path;

use bytes::Bytes;
use image::ExtendedColorType;
use image::codecs::jpeg::JpegEncoder;

/// The sizes drawn from, in megapixels.
const SIZES_MP: [u32; 11] = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 40];

/// JPEG quality of the generated images.
const QUALITY: u8 = 85;

/// One generated image.
#[derive(Clone, Debug)]
pub struct Photo {
    /// Its size in megapixels.
    pub megapixels: u32,
    /// The JPEG file.
    pub jpeg: Bytes,
}

/// The images for `count` requests, drawn with `seed`, none larger than
/// `max_mp` megapixels. Each size is generated once and kept in `cache`.
///
/// # Errors
///
/// When the cache cannot be written or an image cannot be encoded.
pub fn draw(count: usize, max_mp: u32, seed: u64, cache: &Path) -> Result<Vec<Photo>, String> {
    let sizes: Vec<u32> = SIZES_MP.into_iter().filter(|&mp| mp <= max_mp).collect();
    if sizes.is_empty() {
        return Err(format!("no image size is at most {max_mp} MP"));
    }
    fs::create_dir_all(cache).map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
    let mut photos: Vec<Photo> = Vec::with_capacity(sizes.len());
    for &mp in &sizes {
        photos.push(Photo {
            megapixels: mp,
            jpeg: load_or_make(mp, cache)?,
        });
    }
    let weights: Vec<f64> = sizes.iter().map(|&mp| 1.0 / f64::from(mp).sqrt()).collect();
    let mut random = SplitMix(seed);
    Ok((0..count)
        .map(|_| photos[pick(&weights, random.unit())].clone())
        .collect())
}

fn load_or_make(mp: u32, cache: &Path) -> Result<Bytes, String> {
    let path = cache.join(format!("photo-{mp}mp-q{QUALITY}.jpg"));
    if let Ok(jpeg) = fs::read(&path) {
        return Ok(Bytes::from(jpeg));
    }
    let jpeg = make(mp)?;
    fs::write(&path, &jpeg).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!(
        "generated {} ({:.1} MiB)",
        path.display(),
        jpeg.len() as f64 / f64::from(1 << 20)
    );
    Ok(Bytes::from(jpeg))
}

/// A 3:2 image of `mp` megapixels, as a JPEG.
fn make(mp: u32) -> Result<Vec<u8>, String> {
    let pixels = f64::from(mp) * 1e6;
    let width = (pixels * 1.5).sqrt().round() as u32;
    let height = (f64::from(width) / 1.5).round() as u32;
    let rgb = paint(width, height);
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, QUALITY)
        .encode(&rgb, width, height, ExtendedColorType::Rgb8)
        .map_err(|e| format!("cannot encode a {width}x{height} JPEG: {e}"))?;
    Ok(jpeg)
}

/// Gradients, a few soft discs and a per-pixel grain.
fn paint(width: u32, height: u32) -> Vec<u8> {
    let (w, h) = (f64::from(width), f64::from(height));
    let discs = [(0.3, 0.4, 0.2), (0.7, 0.6, 0.25), (0.55, 0.2, 0.1)];
    let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        let fy = f64::from(y) / h;
        for x in 0..width {
            let fx = f64::from(x) / w;
            let shade = discs
                .iter()
                .map(|&(cx, cy, r)| {
                    let d = ((fx - cx).powi(2) + (fy - cy).powi(2)).sqrt();
                    if d < r { 60.0 * (1.0 - d / r) } else { 0.0 }
                })
                .sum::<f64>();
            let grain = f64::from(grain(x, y)) - 8.0;
            let channel = |base: f64| (base + shade + grain).clamp(0.0, 255.0) as u8;
            rgb.push(channel(40.0 + 150.0 * fx));
            rgb.push(channel(60.0 + 120.0 * fy));
            rgb.push(channel(170.0 - 100.0 * fx * fy));
        }
    }
    rgb
}

/// A hash of the position, 0 to 15: the grain of a sensor.
fn grain(x: u32, y: u32) -> u8 {
    let mut v = u64::from(x) << 32 | u64::from(y);
    v = (v ^ (v >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    v ^= v >> 29;
    (v & 15) as u8
}

/// The index whose share of the total weight covers `unit` (0 to 1).
fn pick(weights: &[f64], unit: f64) -> usize {
    let total: f64 = weights.iter().sum();
    let mut left = unit * total;
    for (i, w) in weights.iter().enumerate() {
        if left < *w {
            return i;
        }
        left -= w;
    }
    weights.len() - 1
}

/// splitmix64: a small deterministic generator, so that a seed gives the
/// same sequence of images on every run.
struct SplitMix(u64);

impl SplitMix {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}
