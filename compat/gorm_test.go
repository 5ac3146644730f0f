package compat

import (
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/pgresilient/pgresilient"
)

type GormItem struct {
	ID   int    `gorm:"primaryKey;autoIncrement:false"`
	Name string `gorm:"not null;uniqueIndex"`
}

// openGorm is the recipe: GORM's postgres dialector over the named
// database/sql driver. TranslateError makes GORM map SQLSTATEs to its own
// errors (23505 to gorm.ErrDuplicatedKey).
func openGorm(t *testing.T, driverName, dsn string, noPing bool) *gorm.DB {
	t.Helper()
	db, err := gorm.Open(postgres.New(postgres.Config{DriverName: driverName, DSN: dsn}), &gorm.Config{
		TranslateError:       true,
		DisableAutomaticPing: noPing,
		Logger:               logger.Default.LogMode(logger.Silent),
	})
	if err != nil {
		t.Fatal(err)
	}
	sqlDB, err := db.DB()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sqlDB.Close() })
	return db
}

// TestGormCRUD: AutoMigrate, Create, First, and TranslateError's
// ErrDuplicatedKey, which GORM finds in the *pgconn.PgError pgresilient
// returns as it is.
func TestGormCRUD(t *testing.T) {
	c := requireCluster(t)
	exec(t, c, "drop table if exists gorm_items")
	db := openGorm(t, pgresilient.DriverName, c.DSN(), false)
	if err := db.AutoMigrate(&GormItem{}); err != nil {
		t.Fatal(err)
	}
	if err := db.Create(&GormItem{ID: 1, Name: "a"}).Error; err != nil {
		t.Fatal(err)
	}
	var got GormItem
	if err := db.First(&got, 1).Error; err != nil || got.Name != "a" {
		t.Fatalf("First: %+v, %v", got, err)
	}
	err := db.Create(&GormItem{ID: 2, Name: "a"}).Error
	t.Logf("duplicate name: %v", err)
	if !errors.Is(err, gorm.ErrDuplicatedKey) {
		t.Errorf("want gorm.ErrDuplicatedKey, got %v", err)
	}
}

// TestGormTransaction: inside db.Transaction, a failed statement aborts the
// transaction. Over raw pgx the next statement gets PostgreSQL's 25P02; over
// pgresilient the transaction was rolled back at once and the next statement
// gets a *pgresilient.TxAbortedError: errors.Is(err, ErrTxAborted) holds
// through GORM, and errors.As still finds the first failure's 23505. GORM
// translates only a bare *pgconn.PgError, so that error stays untranslated.
func TestGormTransaction(t *testing.T) {
	c := requireCluster(t)
	for _, name := range drivers {
		t.Run(name, func(t *testing.T) {
			exec(t, c, "drop table if exists gorm_items")
			db := openGorm(t, name, c.DSN(), false)
			if err := db.AutoMigrate(&GormItem{}); err != nil {
				t.Fatal(err)
			}
			if err := db.Create(&GormItem{ID: 1, Name: "a"}).Error; err != nil {
				t.Fatal(err)
			}
			var first, next error
			err := db.Transaction(func(tx *gorm.DB) error {
				first = tx.Create(&GormItem{ID: 2, Name: "a"}).Error
				next = tx.Create(&GormItem{ID: 3, Name: "c"}).Error
				return next
			})
			t.Logf("first statement: %v", first)
			t.Logf("next statement: %T: %v", next, next)
			t.Logf("db.Transaction: %v", err)
			if !errors.Is(first, gorm.ErrDuplicatedKey) {
				t.Errorf("first: want gorm.ErrDuplicatedKey, got %v", first)
			}
			var pgErr *pgconn.PgError
			if name == pgresilient.DriverName {
				if !errors.Is(next, pgresilient.ErrTxAborted) || !errors.Is(err, pgresilient.ErrTxAborted) {
					t.Errorf("want ErrTxAborted from the next statement and db.Transaction, got %v and %v", next, err)
				}
				if !errors.As(err, &pgErr) || pgErr.Code != "23505" {
					t.Errorf("want the first failure's 23505 inside, got %v", err)
				}
			} else if !errors.As(err, &pgErr) || pgErr.Code != "25P02" {
				t.Errorf("raw pgx: want 25P02, got %v", err)
			}
			var n int64
			if err := db.Model(&GormItem{}).Count(&n).Error; err != nil || n != 1 {
				t.Errorf("after the transaction: %d rows, %v; want 1", n, err)
			}
		})
	}
}

// TestGormErrors: a lost connection and an open breaker through GORM.
func TestGormErrors(t *testing.T) {
	c := requireCluster(t)
	for _, name := range drivers {
		dsn, arm := cutProxy(t, c)
		db := openGorm(t, name, dsn, false)
		arm()
		var one int
		checkLost(t, "GORM Raw.Scan", name, db.Raw(cutQuery).Scan(&one).Error)
	}

	db := openGorm(t, pgresilient.DriverName, refusingDSN(t, c), true)
	var one int
	t.Logf("GORM over pgresilient, connection refused: %v", db.Raw("select 1").Scan(&one).Error)
	checkCircuitOpen(t, "GORM Raw.Scan", db.Raw("select 1").Scan(&one).Error)
}
