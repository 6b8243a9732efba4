//! Dispatch grids: a logical count of workgroups folded into x, y and z so that no
//! dimension exceeds the device's `maxComputeWorkgroupsPerDimension`.
//!
//! Every kernel reads its logical workgroup index through `group_index(wid)` from the
//! header [`Grid::wgsl`] emits. A folded grid may launch a few more workgroups than the
//! logical count; `group_index` then returns values of `GROUPS` and above, and each
//! kernel's bounds check on its element index discards them.

use super::CodegenError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    /// The dispatch size passed to `dispatch_workgroups`.
    pub workgroups: [u32; 3],
    /// The logical number of workgroups the kernel needs.
    pub groups: u64,
}

impl Grid {
    /// Folds `groups` workgroups into at most three dimensions of at most `max` each,
    /// keeping the launched surplus small.
    pub fn fold(kernel: &str, groups: u64, max: u32) -> Result<Grid, CodegenError> {
        let groups = groups.max(1);
        let max64 = u64::from(max);
        let too_large = || CodegenError::GridTooLarge {
            kernel: kernel.to_string(),
            workgroups: groups,
            limit: max,
        };
        if groups > max64.pow(3) || groups > u64::from(u32::MAX) {
            return Err(too_large());
        }
        // Fewest rows of at most `max`, then the narrowest row width that covers `groups`.
        let rows = groups.div_ceil(max64);
        let x = groups.div_ceil(rows);
        let (y, z) = if rows <= max64 {
            (rows, 1)
        } else {
            let planes = rows.div_ceil(max64);
            (rows.div_ceil(planes), planes)
        };
        Ok(Grid { workgroups: [x as u32, y as u32, z as u32], groups })
    }

    /// The WGSL constants and the `group_index` function for this grid.
    pub fn wgsl(&self) -> String {
        let [x, y, _] = self.workgroups;
        format!(
            "const GRID_X: u32 = {x}u;\n\
             const GRID_Y: u32 = {y}u;\n\
             const GROUPS: u32 = {groups}u;\n\
             \n\
             // The logical workgroup index; values of GROUPS and above are surplus.\n\
             fn group_index(wid: vec3<u32>) -> u32 {{\n    \
                 return wid.x + GRID_X * (wid.y + GRID_Y * wid.z);\n\
             }}\n",
            groups = self.groups
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_grids_stay_one_dimensional() {
        let grid = Grid::fold("k", 100, 65535).unwrap();
        assert_eq!(grid.workgroups, [100, 1, 1]);
    }

    #[test]
    fn large_grids_fold_into_y_and_z() {
        for groups in [65535u64, 65536, 262_144, 65535 * 65535 + 7, 3_000_000_000] {
            let grid = Grid::fold("k", groups, 65535).unwrap();
            let [x, y, z] = grid.workgroups.map(u64::from);
            assert!(x <= 65535 && y <= 65535 && z <= 65535, "{groups}: {:?}", grid.workgroups);
            assert!(x * y * z >= groups, "{groups} not covered by {:?}", grid.workgroups);
            assert!(x * y * z - groups < x * y, "{groups}: surplus over one plane");
        }
    }

    #[test]
    fn grid_beyond_three_dimensions_is_rejected() {
        let err = Grid::fold("big.kernel", 1 << 40, 1024).unwrap_err();
        assert!(err.to_string().contains("big.kernel"));
    }
}
