//! Shader files for people to read: every kernel of a module as a `.wgsl` file named
//! after the layer it implements, for `netc shaders` and for `NETC_DUMP=dir`.

use super::{lower_graph, CodegenError, Kernel, Mode, Target};
use crate::ir::Module;
use crate::train::atomic::temp_file_in;
use std::io::Write;
use std::path::{Path, PathBuf};

/// One shader file: its path relative to the output folder, and its text.
pub struct ShaderFile {
    pub path: PathBuf,
    pub wgsl: String,
}

fn files_of(folder: &str, kernels: &[Kernel]) -> Vec<ShaderFile> {
    kernels
        .iter()
        .map(|k| ShaderFile {
            path: Path::new(folder).join(format!("{}.wgsl", k.name)),
            wgsl: k.wgsl.clone(),
        })
        .collect()
}

/// Lowers every network of `module` in evaluation mode (one folder per network) and the
/// training graph in training mode (folder `train`).
pub fn module_shaders(module: &Module, target: &Target) -> Result<Vec<ShaderFile>, CodegenError> {
    let mut files = Vec::new();
    for net in &module.nets {
        files.extend(files_of(&net.name, &lower_graph(&net.graph, target, Mode::Eval)?));
    }
    if let Some(train) = &module.train {
        files.extend(files_of("train", &lower_graph(&train.graph, target, Mode::Train)?));
    }
    Ok(files)
}

/// Writes `files` under `dir`, each through a temporary file and a rename.
pub fn write_files(dir: &Path, files: &[ShaderFile]) -> std::io::Result<()> {
    for file in files {
        let path = dir.join(&file.path);
        let parent = path.parent().unwrap_or(dir);
        std::fs::create_dir_all(parent)?;
        let mut temporary = temp_file_in(parent)?;
        temporary.write_all(file.wgsl.as_bytes())?;
        temporary.persist(&path).map_err(|e| e.error)?;
    }
    Ok(())
}

/// Writes `kernels` under `$NETC_DUMP/shaders/<program>/` when `NETC_DUMP` is set. A
/// failure is logged, not raised, because the dump is a debugging aid.
pub fn dump_kernels(program: &str, kernels: &[Kernel]) {
    let Some(dir) = std::env::var_os("NETC_DUMP") else {
        return;
    };
    let dir = Path::new(&dir).join("shaders");
    if let Err(error) = write_files(&dir, &files_of(program, kernels)) {
        tracing::warn!(dir = %dir.display(), %error, "failed to write the NETC_DUMP shaders");
    }
}
