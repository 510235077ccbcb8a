//! One loaded BPF object, whichever it is: opened from the bytes embedded in the binary, its maps
//! re-adopted from bpffs pins when their definitions still match (so a restarted daemon keeps its
//! state), new maps pinned, and every map and program reachable by name.

use std::fs::Permissions;
use std::os::fd::AsFd;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::path::PathBuf;

use anyhow::anyhow;
use anyhow::Context;
use libbpf_rs::Map;
use libbpf_rs::MapCore;
use libbpf_rs::MapHandle;
use libbpf_rs::Object;
use libbpf_rs::ObjectBuilder;
use libbpf_rs::OpenMapMut;
use libbpf_rs::OpenObject;
use log::info;
use log::warn;

/// A loaded object and where its maps are pinned.
pub struct BpfObject {
    obj: Object,
    pin_dir: Option<PathBuf>,
    /// Maps taken over from pins of an earlier run.
    reused: Vec<String>,
}

/// libbpf-internal maps (.rodata, .bss, .data, .kconfig), re-created on every load.
fn map_is_internal(name: &str) -> bool {
    name.contains('.')
}

/// Whether a pinned map can stand in for the object's definition of it.
fn same_definition(pinned: &MapHandle, map: &OpenMapMut<'_>) -> bool {
    pinned.map_type() == map.map_type()
        && pinned.key_size() == map.key_size()
        && pinned.value_size() == map.value_size()
        && pinned.max_entries() == map.max_entries()
        && pinned
            .info()
            .is_ok_and(|i| i.info.map_flags == map.map_flags())
}

impl BpfObject {
    /// Opens and loads `bytes` as object `name`, the maps named in `sizes` resized to the
    /// entries given there. Maps pinned under `pin_dir` by an earlier run are reused when their
    /// definitions (sizes included) match; stale or incompatible pins are replaced. Without
    /// bpffs the object still works, unpinned (its maps then die with the daemon).
    pub fn load(
        name: &str,
        bytes: &[u8],
        pin_dir: &Path,
        sizes: &[(&str, u32)],
    ) -> anyhow::Result<Self> {
        let mut open = ObjectBuilder::default()
            .name(name)
            .context("naming the BPF object")?
            .open_memory(bytes)
            .with_context(|| format!("opening the embedded BPF object {name}"))?;
        for &(map, entries) in sizes {
            let mut m = open
                .maps_mut()
                .find(|m| m.name() == map)
                .ok_or_else(|| anyhow!("map {map} missing from the object"))?;
            m.set_max_entries(entries)
                .with_context(|| format!("sizing map {map} to {entries} entries"))?;
        }
        let pin_dir = match std::fs::create_dir_all(pin_dir) {
            Ok(()) => {
                // Root only: the maps steer and rewrite forwarded traffic, and read out every
                // connection's addresses.
                if let Err(e) = std::fs::set_permissions(pin_dir, Permissions::from_mode(0o700)) {
                    warn!("chmod 0700 {}: {e}", pin_dir.display());
                }
                Some(pin_dir.to_path_buf())
            }
            Err(e) => {
                warn!(
                    "cannot create pin directory {} ({e}); maps will not survive a restart",
                    pin_dir.display()
                );
                None
            }
        };
        let reused = match &pin_dir {
            Some(dir) => reuse_pins(&mut open, dir)?,
            None => Vec::new(),
        };
        let obj = open
            .load()
            .with_context(|| format!("loading BPF object {name} (verifier)"))?;
        let mut object = Self {
            obj,
            pin_dir,
            reused,
        };
        object.pin_new_maps();
        if !object.reused.is_empty() {
            info!("re-adopted pinned maps: {}", object.reused.join(", "));
        }
        Ok(object)
    }

    fn pin_new_maps(&mut self) {
        let Some(dir) = &self.pin_dir else {
            return;
        };
        for mut map in self.obj.maps_mut() {
            let name = map.name().to_string_lossy().into_owned();
            if map_is_internal(&name) || self.reused.contains(&name) {
                continue;
            }
            let path = dir.join(&name);
            if let Err(e) = map.pin(&path) {
                warn!(
                    "pinning map {name} in {}: {e}; is bpffs mounted?",
                    dir.display()
                );
            } else if let Err(e) = std::fs::set_permissions(&path, Permissions::from_mode(0o600)) {
                warn!("chmod 0600 {}: {e}", path.display());
            }
        }
    }

    /// Whether every one of `names` was taken over from a pin (not created by this load).
    pub fn all_reused(&self, names: &[&str]) -> bool {
        names.iter().all(|n| self.reused.iter().any(|r| r == n))
    }

    /// A map of the object.
    pub fn map(&self, name: &str) -> anyhow::Result<Map<'_>> {
        self.obj
            .maps()
            .find(|m| m.name() == name)
            .ok_or_else(|| anyhow!("map {name} missing from the object"))
    }

    /// A handle of its own on a map of the object (an fd that outlives borrows of it).
    pub fn map_handle(&self, name: &str) -> anyhow::Result<MapHandle> {
        MapHandle::try_from(&self.map(name)?).with_context(|| format!("duplicating map {name}"))
    }

    /// An fd of its own on a program of the object, for attach calls.
    pub fn prog_fd(&self, name: &str) -> anyhow::Result<OwnedFd> {
        let prog = self
            .obj
            .progs()
            .find(|p| p.name() == name)
            .ok_or_else(|| anyhow!("program {name} missing from the object"))?;
        prog.as_fd()
            .try_clone_to_owned()
            .with_context(|| format!("duplicating {name}'s fd"))
    }

    /// Removes the object's pins (and the pin directory when nothing else lives in it).
    pub fn unpin(&mut self) {
        let Some(dir) = &self.pin_dir else {
            return;
        };
        for mut map in self.obj.maps_mut() {
            let name = map.name().to_string_lossy().into_owned();
            if !map_is_internal(&name) {
                let _ = map.unpin(dir.join(&name));
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
}

/// Makes the open object use the maps pinned in `dir` whose definitions match; removes the pins
/// that do not (an upgrade changed them). Returns the names of the maps reused.
fn reuse_pins(open: &mut OpenObject, dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut reused = Vec::new();
    for mut map in open.maps_mut() {
        let name = map.name().to_string_lossy().into_owned();
        let path = dir.join(&name);
        if map_is_internal(&name) || !path.exists() {
            continue;
        }
        match MapHandle::from_pinned_path(&path) {
            Ok(old) if same_definition(&old, &map) => {
                map.reuse_fd(old.as_fd())
                    .with_context(|| format!("reusing pinned map {}", path.display()))?;
                reused.push(name);
            }
            _ => {
                warn!(
                    "{}: pinned map does not match this version, replacing it",
                    path.display()
                );
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    Ok(reused)
}
