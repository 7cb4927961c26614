//! A player key read off the panel's camera: the browser player shows its key as a
//! QR code, the owner holds the phone up to the computer, and the panel's page
//! sends frames from the camera here, one at a time, in grey (one byte a pixel, row
//! by row). The host looks for a QR code that holds a player key (the bare key, or
//! after the `player key:` label) and answers it; the page puts it in the form.
//!
//! The host reads the code rather than the browser so that every browser with a
//! camera can scan (few have a barcode detector of their own). Nothing is kept: a
//! frame is dropped once read, and neither frames nor keys are logged.

use blindrelay_client::PublicKey;

use super::players;

/// The widest and tallest frame read: the page scales its frames to 640 wide.
pub(crate) const MAX_SIDE: usize = 1024;

/// The largest frame, in bytes.
pub(crate) const MAX_FRAME: usize = MAX_SIDE * MAX_SIDE;

/// Why a frame gave no key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ScanError {
    /// The size asked for, or the bytes sent, are not a frame this reads.
    #[error("a frame is `width` x `height` grey bytes, each side 1 to {MAX_SIDE}: got {len} bytes for {width} x {height}")]
    BadFrame {
        /// Pixels a row, as the query said.
        width: usize,
        /// Rows, as the query said.
        height: usize,
        /// Bytes in the body.
        len: usize,
    },
    /// The frame holds no QR code, or none that holds a player key.
    #[error("no player key in view")]
    NoKey,
}

/// The frame size named by a query such as `width=640&height=480`.
pub(crate) fn frame_size(query: Option<&str>) -> Option<(usize, usize)> {
    let mut width = None;
    let mut height = None;
    for pair in query?.split('&') {
        match pair.split_once('=')? {
            ("width", value) => width = Some(value.parse().ok()?),
            ("height", value) => height = Some(value.parse().ok()?),
            _ => return None,
        }
    }
    Some((width?, height?))
}

/// The player key in a `width` x `height` grey frame, if a QR code in it holds one.
pub(crate) fn read_key(width: usize, height: usize, grey: &[u8]) -> Result<PublicKey, ScanError> {
    let bad = || ScanError::BadFrame {
        width,
        height,
        len: grey.len(),
    };
    if !(1..=MAX_SIDE).contains(&width) || !(1..=MAX_SIDE).contains(&height) {
        return Err(bad());
    }
    if width.checked_mul(height) != Some(grey.len()) {
        return Err(bad());
    }
    let mut image =
        rqrr::PreparedImage::prepare_from_greyscale(width, height, |x, y| grey[y * width + x]);
    image
        .detect_grids()
        .into_iter()
        .filter_map(|grid| grid.decode().ok())
        .find_map(|(_, text)| players::parse_key(&text).ok())
        .ok_or(ScanError::NoKey)
}

#[cfg(test)]
mod tests {
    use super::*;
    use blindrelay_client::SecretKey;

    fn key() -> PublicKey {
        SecretKey::generate().expect("key").public_key()
    }

    /// `text` as a QR code drawn `scale` pixels a module, with a quiet zone, on a
    /// `side`-pixel grey frame (the code in its top-left part).
    fn frame(text: &str, scale: usize, side: usize) -> Vec<u8> {
        let code = qrcode::QrCode::new(text.as_bytes()).expect("fits");
        let modules = code.width();
        let colors = code.to_colors();
        let mut grey = vec![255u8; side * side];
        for y in 0..modules {
            for x in 0..modules {
                if colors[y * modules + x] == qrcode::Color::Dark {
                    for py in 0..scale {
                        for px in 0..scale {
                            grey[(20 + y * scale + py) * side + 20 + x * scale + px] = 0;
                        }
                    }
                }
            }
        }
        grey
    }

    #[test]
    fn a_key_on_camera_is_read_bare_or_after_its_label() {
        let a = key();
        assert_eq!(read_key(300, 300, &frame(&a.to_string(), 6, 300)), Ok(a));
        let b = key();
        let labelled = frame(&format!("player key: {b}"), 5, 300);
        assert_eq!(read_key(300, 300, &labelled), Ok(b));
    }

    #[test]
    fn a_frame_without_a_key_gives_none() {
        assert_eq!(read_key(64, 48, &[200; 64 * 48]), Err(ScanError::NoKey));
        let ticket_like = frame("brtnotaplayerkey", 6, 300);
        assert_eq!(read_key(300, 300, &ticket_like), Err(ScanError::NoKey));
    }

    #[test]
    fn frames_past_the_limits_or_of_the_wrong_length_are_refused() {
        for (width, height, len) in [
            (0, 10, 0),
            (10, 0, 0),
            (MAX_SIDE + 1, 1, MAX_SIDE + 1),
            (10, 10, 99),
        ] {
            assert_eq!(
                read_key(width, height, &vec![0; len]),
                Err(ScanError::BadFrame { width, height, len })
            );
        }
    }

    #[test]
    fn the_size_comes_from_the_query() {
        assert_eq!(frame_size(Some("width=640&height=480")), Some((640, 480)));
        assert_eq!(frame_size(Some("height=2&width=1")), Some((1, 2)));
        assert_eq!(frame_size(Some("width=640")), None);
        assert_eq!(frame_size(Some("width=x&height=1")), None);
        assert_eq!(frame_size(Some("width=1&height=1&more=1")), None);
        assert_eq!(frame_size(None), None);
    }
}
