# ConsensusClusterPlus peer (Wilkerson & Hayes 2010), settings of the package vignette:
# genes median-centred, hierarchical clustering (average linkage) on Pearson distance,
# reps = 50, pItem = 0.8, pFeature = 1, maxK = 6; K chosen by the lowest PAC (u = 0.1..0.9,
# Senbabaoglu et al. 2014).
# Usage: Rscript bench/peer_ccp.R MATRIX.f32 IDS.txt N_ROWS N_COLS OUT_DIR
# MATRIX.f32: little-endian float32, patients x genes, row-major (written by bench/run.py).
suppressMessages(library(ConsensusClusterPlus))
args <- commandArgs(trailingOnly = TRUE)
n <- as.integer(args[3]); p <- as.integer(args[4]); out <- args[5]
t0 <- proc.time()[["elapsed"]]
con <- file(args[1], "rb")
x <- readBin(con, what = "numeric", n = n * p, size = 4, endian = "little")
close(con)
ids <- readLines(args[2])
d <- matrix(x, nrow = p, ncol = n)  # row-major patients x genes == column-major genes x patients
rm(x)
colnames(d) <- ids
d <- sweep(d, 1, apply(d, 1, median, na.rm = TRUE))
t_read <- proc.time()[["elapsed"]] - t0
t1 <- proc.time()[["elapsed"]]
setwd(out)
res <- ConsensusClusterPlus(d, maxK = 6, reps = 50, pItem = 0.8, pFeature = 1,
                            clusterAlg = "hc", distance = "pearson", seed = 1,
                            plot = NULL, verbose = FALSE)
t_ccp <- proc.time()[["elapsed"]] - t1
pac <- sapply(2:6, function(k) {
  m <- res[[k]]$consensusMatrix
  v <- m[upper.tri(m)]
  mean(v > 0.1 & v < 0.9)
})
best <- (2:6)[which.min(pac)]
write.csv(data.frame(patient_id = ids, cluster = as.integer(res[[best]]$consensusClass) - 1L),
          file.path(out, "labels.csv"), row.names = FALSE, quote = FALSE)
cat(sprintf('{"steps_s": {"read": %.3f, "consensus": %.3f}, "n_clusters": %d, "pac": [%s],
  "params": {"maxK": 6, "reps": 50, "pItem": 0.8, "clusterAlg": "hc", "distance": "pearson"},
  "versions": {"ConsensusClusterPlus": "%s", "R": "%s"}}\n',
            t_read, t_ccp, best, paste(sprintf("%.6f", pac), collapse = ", "),
            as.character(packageVersion("ConsensusClusterPlus")),
            paste(R.version$major, R.version$minor, sep = ".")),
    file = file.path(out, "steps.json"))
